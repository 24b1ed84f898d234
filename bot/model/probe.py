"""`ponder doctor`'s model-server checks: is it there, does it serve the configured model,
does it keep to the step schema, does it stream a reasoning field; and is there a GPU."""

from __future__ import annotations

import json
import logging

from bot.config import Mode, Settings
from bot.llm import LLMClient, LLMError, TextDelta
from bot.model.gpu import detect_gpu
from bot.platforms import Check, Limits
from bot.steps import StepResult

log = logging.getLogger(__name__)


# Enough for one short step; a model that needs more to name 5 apples is rambling whitespace.
STEP_PROBE_TOKENS = 256


class ModelProbe:
    """The model-server checks, asked through Ponder's own client as a chain would ask."""

    def __init__(self, settings: Settings, limits: Limits) -> None:
        self.base = settings.openai_base_url.rstrip("/")
        self.settings = settings
        # One try each; the client's probes wait twice connect_timeout, i.e. limits.http.
        self.llm = LLMClient(settings.model_copy(update={
            "connect_timeout": limits.http / 2, "request_timeout": limits.completion,
            "max_attempts": 1, "temperature": 0.0,
        }))

    async def close(self) -> None:
        await self.llm.close()

    async def models(self) -> tuple[Check, list[str] | None]:
        name = "model server"
        fix = ("start one with `ponder model serve` (CPU: `ponder model serve --demo`), "
               "or set OPENAI_BASE_URL to a running server")
        try:
            ids = await self.llm.served_models()
        except LLMError as exc:
            if exc.status in (401, 403):
                return Check(name, "fail", f"{self.base} refused the API key (HTTP "
                             f"{exc.status})", "set OPENAI_API_KEY to the server's key"), None
            if exc.status is None:
                return Check(name, "fail", f"no answer at {self.base} ({exc.detail})", fix), None
            what = f"HTTP {exc.status}" if exc.status >= 300 else exc.detail
            return Check(name, "fail", f"{self.base}/models answered {what}",
                         "check that OPENAI_BASE_URL ends in /v1"), None
        return Check(name, "ok", f"reachable at {self.base}"), ids

    def served(self, ids: list[str]) -> Check:
        want = self.settings.model
        if want in ids:
            return Check("model name", "ok", f"{want} is served")
        shown = ", ".join(ids) or "none"
        return Check("model name", "fail", f"{want} is not served (served: {shown})",
                     "set PONDER_MODEL to one of those, or serve it under this name "
                     "(`ponder model serve` uses PONDER_MODEL as --served-model-name)")

    async def structured(self) -> Check:
        name = "structured outputs"
        # Chain mode asks for every step with a JSON schema; native mode never does.
        required = self.settings.mode == Mode.CHAIN
        fix = ("serve with vLLM ≥ 0.12 and `--structured-outputs-config "
               "'{\"backend\":\"xgrammar\",\"disable_any_whitespace\":true}'` "
               "(`ponder model serve` does)")
        messages = [{"role": "user", "content":
                     "I have 2 apples and buy 3 more. How many apples do I have? Reply with "
                     "one short reasoning step in JSON: `title`, `content`, `next_action`."}]
        step: StepResult | None = None
        failure: LLMError | None = None
        try:
            # A chain's own step request: when this passes, chains get parseable steps.
            async for item in self.llm.stream_step(messages, chain_id="ponder-doctor",
                                                   max_tokens=STEP_PROBE_TOKENS):
                if isinstance(item, StepResult):
                    step = item
        except LLMError as exc:
            failure = exc
        fmt = self.llm.output_format
        if fmt != "json_schema":
            return Check(name, "fail", f"the server refused a json_schema request (chains fall "
                         f"back to {fmt}: steps may not parse)", fix, required=required)
        if failure is not None or step is None:
            why = failure.detail if failure is not None else "no step came back"
            return Check(name, "fail", f"a json_schema request failed ({why})", fix,
                         required=required)
        if step.salvaged and not step.content:
            return Check(name, "fail", "response_format was ignored: no JSON step in the reply",
                         fix, required=required)
        shown = json.dumps({"title": step.title, "content": step.content,
                            "next_action": step.next_action},
                           ensure_ascii=False, separators=(",", ":"))
        if step.salvaged:
            return Check(name, "fail", "the reply breaks the schema or ran to max_tokens "
                         f"(whitespace?): {shown[:60]}", fix, required=required)
        return Check(name, "ok", f"a json_schema request gave schema-valid JSON {shown[:60]}")

    async def reasoning(self) -> Check:
        name = "reasoning field"
        native = self.settings.mode == Mode.NATIVE
        messages = [{"role": "user", "content": "What is 2 + 2?"}]
        has = False
        try:
            async for item in self.llm.stream_text(messages, chain_id="ponder-doctor",
                                                   max_tokens=32):
                if isinstance(item, TextDelta) and item.reasoning:
                    has = True
        except LLMError as exc:
            return Check(name, "fail", f"a plain request failed ({exc.detail})",
                         "look at the model server's log", required=native)
        if has:
            return Check(name, "ok", "present: a reasoning model (PONDER_MODE=native can use it)")
        if native:
            return Check(name, "fail", "absent, but PONDER_MODE=native needs it",
                         "serve a reasoning model with --reasoning-parser (e.g. qwen3), "
                         "or set PONDER_MODE=chain")
        return Check(name, "ok", "absent (fine for PONDER_MODE=chain)")


async def gpu_check(limits: Limits) -> Check:
    gpu = await detect_gpu(limits.http)
    if gpu:
        return Check("GPU", "ok", gpu, required=False)
    return Check("GPU", "skip", "none found: a server started here runs the CPU demo model",
                 required=False)
