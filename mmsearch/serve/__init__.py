"""HTTP serving: a JSON API over collections and a search web page (needs ``pip install 'mmsearch[serve]'``).

    from mmsearch.serve import create_app, run
    app = create_app({"photos": "photos.mms"}, api_key=None)   # an ASGI app (FastAPI)
    run(["photos.mms"], host="127.0.0.1", port=8000)            # serve it with uvicorn

Endpoints (all JSON; errors are ``{"error": {"status", "code", "message"}}``; OpenAPI at ``/docs``):

    GET  /                                            the web page
    GET  /api/health
    GET  /api/collections
    GET  /api/collections/{name}                      Collection.info()
    GET  /api/collections/{name}/search?q=TEXT&k=10&modality=image
    POST /api/collections/{name}/search/image         multipart field "file"
    GET  /api/collections/{name}/items/{id}
    GET  /api/collections/{name}/items/{id}/similar
    GET  /api/collections/{name}/items/{id}/thumbnail?size=256
    GET  /api/collections/{name}/items/{id}/image
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..errors import MissingExtraError
from .options import DEFAULT_MAX_UPLOAD_BYTES, ServeOptions

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .catalog import CollectionLike

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "UVICORN_SETTINGS", "ServeOptions", "create_app", "run"]

#: uvicorn settings :func:`run` uses: no Server header; request heads up to 64 KiB (longer ones get a 4xx)
UVICORN_SETTINGS: dict[str, Any] = {"server_header": False, "h11_max_incomplete_event_size": 64 * 1024}


def create_app(collections: Mapping[str, CollectionLike] | Sequence[CollectionLike], *,
               options: ServeOptions | None = None, **settings: Any) -> FastAPI:
    """The ASGI app serving ``collections``; settings are those of :class:`ServeOptions`."""
    _require("fastapi")
    _require("multipart")
    from .app import create_app as _create_app

    return _create_app(collections, options=options, **settings)


def run(collections: Mapping[str, CollectionLike] | Sequence[CollectionLike], *, host: str = "127.0.0.1",
        port: int = 8000, log_level: str = "info", options: ServeOptions | None = None, **settings: Any) -> None:
    """Serve ``collections`` with uvicorn until interrupted. Binds to loopback unless ``host`` says otherwise."""
    _require("uvicorn")
    import uvicorn

    app = create_app(collections, options=options, **settings)
    uvicorn.run(app, host=host, port=port, log_level=log_level, **UVICORN_SETTINGS)


def _require(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(module, "serve")
