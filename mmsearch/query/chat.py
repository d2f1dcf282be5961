"""Sending an evidence bundle and a question to an OpenAI-compatible chat endpoint.

Standard library HTTP only (one POST to ``{url}/chat/completions``), so no client library is needed.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from ..errors import MMSearchError
from .evidence import EvidenceBundle

SYSTEM_PROMPT = (
    "You answer questions about a user's image and text collection using only the evidence given. "
    "Cite the evidence you use as [I1], [T2]. If the evidence does not answer the question, say so plainly."
)


class ChatError(MMSearchError):
    """The chat endpoint could not be reached or answered badly."""


@dataclass(frozen=True)
class ChatConfig:
    """Where the OpenAI-compatible endpoint is (``url`` is the API base, e.g. ``http://host:8080/v1``)."""

    url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 60.0


def ask(bundle: EvidenceBundle, config: ChatConfig) -> str:
    """The endpoint's answer to the bundle's question, given the bundle as evidence."""
    body = {
        "model": config.model,
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": bundle.to_prompt()}],
        "temperature": 0,
    }
    request = urllib.request.Request(
        config.url.rstrip("/") + "/chat/completions", data=json.dumps(body).encode("utf-8"), method="POST",
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {config.api_key}"} if config.api_key else {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=config.timeout_s) as response:
            payload = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise ChatError(f"chat endpoint {config.url} answered HTTP {exc.code}: {exc.read()[:300]!r}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise ChatError(f"cannot reach the chat endpoint {config.url}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ChatError(f"chat endpoint {config.url} did not answer JSON: {exc}") from exc
    try:
        return str(payload["choices"][0]["message"]["content"]).strip()
    except (KeyError, IndexError, TypeError) as exc:
        raise ChatError(f"unexpected answer from {config.url}: {str(payload)[:300]}") from exc
