"""The model server's answers as they arrive: Server-Sent Events read off the raw body, and
its failures in a few words."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
import openai

# Short causes, as a probe shows them; the client turns them into a chain's message.
NO_SERVER = "cannot connect"
TIMED_OUT = "timed out"


async def sse_batches(response: httpx2.Response) -> AsyncIterator[list[bytes]]:
    """The `data:` payloads of a Server-Sent Events body, a list per network read, split from
    raw bytes (the SDK's text and line layers cost more than the JSON at many tokens a second)."""
    pending = b""
    # vLLM never compresses; a proxy might, and then the decoding layer is needed.
    blocks = response.aiter_bytes() if "content-encoding" in response.headers else (
        response.aiter_raw())
    async for block in blocks:
        pending += block
        *lines, pending = pending.split(b"\n")
        batch = [line[5:].strip() for line in lines if line.startswith(b"data:")]
        if batch:
            yield batch
    if pending.startswith(b"data:"):
        yield [pending[5:].strip()]


# --- failures --------------------------------------------------------------------------------


def unreachable(exc: openai.APIConnectionError) -> str:
    # The aiohttp transport reports a refused connection as a connect *timeout*.
    connect = isinstance(exc.__cause__, httpx2.ConnectError | httpx2.ConnectTimeout)
    return NO_SERVER if connect else TIMED_OUT


def retry_after(exc: openai.APIStatusError) -> float | None:
    header = exc.response.headers.get("retry-after") if exc.response is not None else None
    try:
        return float(header) if header is not None else None
    except ValueError:
        return None


def message_of(body: object) -> str:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:200]
        for key in ("message", "detail"):  # FastAPI's own errors say `detail`
            if isinstance(body.get(key), str) and body[key]:
                return str(body[key])[:200]
    return ""


def error_text(exc: openai.APIStatusError) -> str:
    """The server's reason in a few words. A body that is no error object (a proxy's HTML
    page) is not shown: its status's name is."""
    found = message_of(exc.body)
    if found:
        return found
    text = exc.body.strip() if isinstance(exc.body, str) else ""
    if text and not text.startswith("<"):
        return text[:200]
    phrase = exc.response.reason_phrase if exc.response is not None else ""
    return phrase or f"HTTP {exc.status_code}"
