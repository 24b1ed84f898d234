"""Is a model server there, and is it ready? Asked through `LLMClient`, like every model call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from bot.config import load_settings
from bot.errors import ModelError
from bot.llm import LLMClient, LLMError


def probe_client(base_url: str, api_key: str, model: str | None = None, *, probe: float,
                 request: float) -> LLMClient:
    """A one-try client for the server at `base_url`; `probe`: seconds for /health or /models."""
    settings = load_settings(
        openai_base_url=base_url, openai_api_key=api_key, temperature=0.0,
        connect_timeout=probe / 2, request_timeout=request, max_attempts=1,
        **({"model": model} if model else {}),
    )
    return LLMClient(settings)


async def server_answers(base_url: str, api_key: str = "EMPTY", limit: float = 3.0) -> bool:
    """Whether anything answers HTTP at `base_url` (any status: it is there, even if it refuses)."""
    llm = probe_client(base_url, api_key, probe=limit, request=limit)
    try:
        await llm.served_models()
    except LLMError as exc:
        return exc.status is not None
    finally:
        await llm.close()
    return True


async def wait_ready(
    base_url: str,
    *,
    api_key: str,
    served_name: str,
    exit_code: Callable[[], int | None],
    log_tail: Callable[[], Awaitable[str]],
    limit: float = 900.0,
    poll: float = 0.5,
) -> float:
    """Wait for /health, then for one tiny completion; return the seconds since called.

    `exit_code` tells whether the server process died meanwhile (then waiting is pointless);
    `log_tail` words the end of its log for the error.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + limit
    root_url = base_url.rstrip("/").removesuffix("/v1")
    llm = probe_client(base_url, api_key, served_name, probe=2.0, request=limit)
    try:
        while True:
            code = exit_code()
            if code is not None:
                raise ModelError(
                    f"the model server exited with code {code} before it was ready"
                    f"{await log_tail()}"
                )
            if await llm.healthy():
                break
            if loop.time() >= deadline:
                raise ModelError(
                    f"the model server did not answer {root_url}/health within "
                    f"{limit:.0f} s{await log_tail()}"
                )
            await asyncio.sleep(poll)
        # /health answers before the first request has paid for warm-up (and grammar
        # compilation); one tiny completion makes "ready" mean ready.
        remaining = max(5.0, deadline - loop.time())
        try:
            async with asyncio.timeout(remaining):
                async for _ in llm.stream_text([{"role": "user", "content": "Say OK."}],
                                               chain_id="ponder-ready", max_tokens=1):
                    pass
        except LLMError as exc:
            raise ModelError(
                f"the model server is up but a test completion failed ({exc.detail})"
            ) from None
        except TimeoutError:
            raise ModelError(
                f"the model server is up but a test completion failed (no answer within "
                f"{remaining:.0f} s)"
            ) from None
    finally:
        await llm.close()
    return loop.time() - started
