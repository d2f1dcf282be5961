"""The FastAPI app: JSON endpoints over :class:`mmsearch.Collection` and the web page at ``/``.

The app holds no search logic: it validates input, calls ``Collection.search`` / ``info`` on a bounded
worker pool (so the event loop never blocks on encoding, FAISS or image decoding), and renders
``Hit.to_dict()``.
"""

from __future__ import annotations

import functools
import secrets
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Literal, Mapping, Sequence, TypeVar

import anyio
from fastapi import APIRouter, Depends, FastAPI, File, Query, UploadFile
from fastapi import Path as PathParam
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..query.filters import Filter
from ..search import Hit
from .catalog import CollectionLike, Served, build_catalog
from .errors import ApiError, install_handlers
from .limits import BodyLimit
from .media import ThumbnailCache, decode_upload, make_thumbnail, read_member
from .options import ServeOptions

T = TypeVar("T")
Modality = Literal["image", "text"]
MAX_ID = 2**63 - 1
STATIC_DIR = Path(str(resources.files(__package__) / "static"))
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="Needed when the server has an API key.")


@dataclass
class ServerState:
    """What the routes share: the collections, the options, the worker pool and the thumbnail cache."""

    catalog: dict[str, Served]
    options: ServeOptions
    thumbnails: ThumbnailCache
    limiter: anyio.CapacityLimiter | None = None
    _local: threading.local = field(default_factory=threading.local)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking work on the bounded pool."""
        job = functools.partial(self._bounded, fn, *args, **kwargs)
        return await anyio.to_thread.run_sync(job, limiter=self.limiter)

    def _bounded(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # OpenMP's thread count is per calling thread, so each pool thread sets it once for itself
        if getattr(self._local, "faiss_threads", None) != self.options.faiss_threads:
            import faiss

            faiss.omp_set_num_threads(self.options.faiss_threads)
            self._local.faiss_threads = self.options.faiss_threads
        return fn(*args, **kwargs)

    def served(self, name: str) -> Served:
        """The collection called ``name`` (404 when there is none)."""
        try:
            served = self.catalog[name]
        except KeyError:
            known = ", ".join(sorted(self.catalog))
            raise ApiError(404, f"no collection named {name!r}; this server has: {known}", code="unknown_collection") from None
        if self.options.reload_check_s is not None:
            fresh = served.refreshed(self.options.reload_check_s)
            if fresh is not served:
                self.catalog[name] = served = fresh
        return served


def create_app(collections: Mapping[str, CollectionLike] | Sequence[CollectionLike], *,
               options: ServeOptions | None = None, **settings: Any) -> FastAPI:
    """The ASGI app serving ``collections`` (a dict name -> Collection or path, or a list of them).

    Settings are those of :class:`ServeOptions`, given as ``options=`` or as keywords
    (``create_app(["photos.mms"], api_key="...", max_upload_bytes=5_000_000)``).
    """
    opts = options or ServeOptions(**settings)
    state = ServerState(build_catalog(collections, media_roots=opts.media_roots), opts,
                        ThumbnailCache(opts.thumbnail_cache_items))
    docs_assets = _docs_assets()
    # with the Swagger UI files installed (mmsearch[serve] brings them) /docs works offline; without, FastAPI's
    # default pages load them from a CDN
    default_docs = {} if docs_assets is None else {"docs_url": None, "redoc_url": None}
    app = FastAPI(title="mmsearch", version=__version__, lifespan=_lifespan(state), **default_docs,
                  description="Search image and text collections by text, image or item id. Scores are cosine "
                              "similarities: higher is more similar, 1.0 is identical.")
    app.state.mmsearch = state
    install_handlers(app)
    app.add_middleware(BodyLimit, max_body_bytes=opts.max_upload_bytes + 64 * 1024)
    app.include_router(_public_routes(state))
    app.include_router(_api_routes(state), dependencies=[Depends(_auth(opts.api_key))])
    if docs_assets is not None:
        app.include_router(_docs_routes(app))
        app.mount(DOCS_ASSETS_URL, StaticFiles(directory=docs_assets), name="docs-assets")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


DOCS_ASSETS_URL = "/static/docs"


def _docs_assets() -> Path | None:
    """The folder of Swagger UI and ReDoc files shipped by the ``fastapi-offline`` package, if installed."""
    try:
        folder = Path(str(resources.files("fastapi_offline") / "static"))
    except (ImportError, TypeError):
        return None
    needed = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js")
    return folder if all((folder / name).is_file() for name in needed) else None


def _docs_routes(app: FastAPI) -> APIRouter:
    """FastAPI's recipe for self-hosted docs: /docs and /redoc from files on this server, no CDN."""
    router = APIRouter(include_in_schema=False)
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @router.get("/docs")
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=openapi_url, title=f"{app.title} - Swagger UI",
                                   oauth2_redirect_url=oauth2_redirect,
                                   swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg",
                                   # no validator badge: it would ask validator.swagger.io about the schema
                                   swagger_ui_parameters={"validatorUrl": None})

    @router.get(oauth2_redirect)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=openapi_url, title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{DOCS_ASSETS_URL}/redoc.standalone.js",
                              redoc_favicon_url="/static/favicon.svg", with_google_fonts=False)

    return router


def _lifespan(state: ServerState) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.limiter = anyio.CapacityLimiter(state.options.worker_threads)
        if state.options.torch_threads is not None:
            import torch

            torch.set_num_threads(state.options.torch_threads)
        if state.options.warm_up:
            for served in state.catalog.values():
                await state.run(_warm_up, served)
        yield

    return lifespan


def _warm_up(served: Served) -> None:
    """Load the model (both towers), the indexes and the metadata now rather than on the first request."""
    from PIL import Image

    served.warm_rows()
    served.roots()
    col = served.collection
    info = col.info()
    for modality, count in (("image", info["images"]), ("text", info["texts"])):
        if count:
            col.search("warm-up", k=1, modality=modality)
            col.search(image=Image.new("RGB", (32, 32), (128, 128, 128)), k=1, modality=modality)


def _auth(api_key: str | None) -> Callable[..., Any]:
    async def check(key: str | None = Depends(API_KEY_HEADER)) -> None:
        if api_key is not None and not (key and secrets.compare_digest(key.encode(), api_key.encode())):
            raise ApiError(401, "this server needs an API key in the X-API-Key header", code="unauthorized")

    return check


def _public_routes(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        # the page keeps its state in the query string (?collection=&q=&modality=&k=): every such URL is this page
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    @router.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "favicon.ico", media_type="image/x-icon",
                            headers={"Cache-Control": "public, max-age=86400"})

    @router.get("/api/health", tags=["server"])
    async def health() -> dict[str, Any]:
        """Liveness: always answers without an API key."""
        return {"status": "ok", "version": __version__, "api_key_required": state.options.api_key is not None}

    return router


def _api_routes(state: ServerState) -> APIRouter:
    router = APIRouter(prefix="/api")
    _collection_routes(router, state)
    _search_routes(router, state)
    _item_routes(router, state)
    return router


def _collection_routes(router: APIRouter, state: ServerState) -> None:
    @router.get("/collections", tags=["collections"])
    async def collections() -> dict[str, Any]:
        """The collections this server holds, with model and counts."""
        infos = [(name, state.served(name).collection.info()) for name in list(state.catalog)]
        return {"collections": [{"name": n, "model": i["model"]["spec"], "images": i["images"], "texts": i["texts"]}
                                for n, i in infos]}

    @router.get("/collections/{name}", tags=["collections"])
    async def collection_info(name: str) -> dict[str, Any]:
        """Model, counts, shards and indexes of one collection."""
        return {"name": name, **state.served(name).collection.info()}


def _search_routes(router: APIRouter, state: ServerState) -> None:
    opts = state.options
    k_param = Query(10, ge=1, le=opts.max_k, description="How many results.")
    modality_param = Query("image", description="What to return: images or texts.")
    label_param = Query(None, max_length=200, description="Keep images whose stored labels match one of these "
                        "names (repeat the parameter for several; whole words, any case). See docs/labels.md.")

    @router.get("/collections/{name}/search", tags=["search"])
    async def search_text(name: str, q: str = Query(..., min_length=1, max_length=opts.max_query_chars),
                          k: int = k_param, modality: Modality = modality_param,
                          label: list[str] | None = label_param) -> dict[str, Any]:
        """Search by text: the ``k`` items most similar to the text ``q``."""
        return await _search(state, name, {"type": "text", "text": q}, k, modality, text=q, filter=_labels(label))

    @router.post("/collections/{name}/search/image", tags=["search"])
    async def search_image(name: str, file: UploadFile = File(..., description="The query image."),
                           k: int = k_param, modality: Modality = modality_param,
                           label: list[str] | None = label_param) -> dict[str, Any]:
        """Search by an uploaded image (multipart field ``file``)."""
        state.served(name)
        data = await file.read(opts.max_upload_bytes + 1)
        if len(data) > opts.max_upload_bytes:
            raise ApiError(413, f"the upload is larger than {opts.max_upload_bytes} bytes", code="upload_too_large")
        image = await state.run(decode_upload, data, max_image_pixels=opts.max_image_pixels)
        query = {"type": "image", "filename": (file.filename or "")[:200], "bytes": len(data)}
        return await _search(state, name, query, k, modality, image=image, filter=_labels(label))

    @router.get("/collections/{name}/items/{item_id}/similar", tags=["search"])
    async def search_similar(name: str, item_id: int = PathParam(..., ge=0, le=MAX_ID), k: int = k_param,
                             modality: Modality = modality_param,
                             label: list[str] | None = label_param) -> dict[str, Any]:
        """Items similar to item ``item_id`` (the item itself left out)."""
        await state.run(state.served(name).item, item_id)
        return await _search(state, name, {"type": "id", "id": item_id}, k, modality, id=item_id,
                             filter=_labels(label))


def _labels(names: list[str] | None) -> Filter | None:
    """The ``label`` query parameters as a filter (None: no such parameter)."""
    names = [n for n in names or [] if n.strip()]
    return Filter(labels=names) if names else None


async def _search(state: ServerState, name: str, query: dict[str, Any], k: int, modality: str,
                  **search: Any) -> dict[str, Any]:
    col = state.served(name).collection
    started = time.perf_counter()
    hits: list[Hit] = await state.run(col.search, k=k, modality=modality, **search)
    took_ms = round((time.perf_counter() - started) * 1000, 2)
    return {"collection": name, "query": query, "modality": modality, "k": k,
            "hits": [h.to_dict() for h in hits], "took_ms": took_ms}


def _item_routes(router: APIRouter, state: ServerState) -> None:
    opts = state.options
    id_param = PathParam(..., ge=0, le=MAX_ID, description="The item id.")

    @router.get("/collections/{name}/items/{item_id}", tags=["items"])
    async def item(name: str, item_id: int = id_param) -> dict[str, Any]:
        """The stored metadata of one item (the Hit JSON form, without a score)."""
        return (await state.run(state.served(name).item, item_id)).to_dict()

    @router.get("/collections/{name}/items/{item_id}/image", tags=["items"], response_class=Response)
    async def image(name: str, item_id: int = id_param) -> Response:
        """The original image file of an image item (only files that belong to the collection)."""
        data, mime = await state.run(_member, state.served(name), item_id, opts)
        return Response(data, media_type=mime, headers={"Cache-Control": "private, max-age=300"})

    @router.get("/collections/{name}/items/{item_id}/thumbnail", tags=["items"], response_class=Response)
    async def thumbnail(name: str, item_id: int = id_param,
                        size: int = Query(256, ge=16, le=1024, description="Longest side, pixels.")) -> Response:
        """A JPEG thumbnail of an image item."""
        data = await state.run(_thumbnail, state, state.served(name), item_id, size)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})


def _member(served: Served, item_id: int, opts: ServeOptions) -> tuple[bytes, str]:
    return read_member(served.item(item_id), served.roots(), max_bytes=opts.max_media_bytes)


def _thumbnail(state: ServerState, served: Served, item_id: int, size: int) -> bytes:
    item = served.item(item_id)
    key = (served.name, item_id, size, item.metadata.get("sha256"))
    cached = state.thumbnails.get(key)
    if cached is not None:
        return cached
    data, _ = read_member(item, served.roots(), max_bytes=state.options.max_media_bytes)
    thumb = make_thumbnail(data, size, max_image_pixels=state.options.max_image_pixels)
    state.thumbnails.put(key, thumb)
    return thumb
