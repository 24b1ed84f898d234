"""The model server: ModelScope download, the vLLM launcher, the CPU demo model, `ponder model`.

Ponder talks to any OpenAI-compatible server; this package only helps run the one it was built
for. Its modules, lowest first: `weights` (cache folders, download, demo model), `gpu`,
`command` (vLLM's interpreter, command line and environment), `readiness`, `process` (the
server's process group), `serving` (a server beside `ponder run`, or in the foreground) and
`commands` (`ponder model …`). The names below are the ones the rest of Ponder uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot.errors import ModelError

if TYPE_CHECKING:
    from bot.model.command import (
        STRUCTURED_OUTPUTS_CONFIG,
        ServerSpec,
        build_server_args,
        find_vllm_python,
        server_env,
        server_spec,
    )
    from bot.model.commands import register_commands
    from bot.model.gpu import detect_gpu
    from bot.model.process import ServerProcess
    from bot.model.readiness import server_answers
    from bot.model.serving import managed_server, serve
    from bot.model.weights import (
        DEFAULT_MODEL_ID,
        DEMO_MODEL_NAME,
        cache_root,
        demo_model_dir,
        download_model,
        prepare_demo_model,
    )

__all__ = [
    "DEFAULT_MODEL_ID",
    "DEMO_MODEL_NAME",
    "STRUCTURED_OUTPUTS_CONFIG",
    "ModelError",
    "ServerProcess",
    "ServerSpec",
    "build_server_args",
    "cache_root",
    "demo_model_dir",
    "detect_gpu",
    "download_model",
    "find_vllm_python",
    "managed_server",
    "prepare_demo_model",
    "register_commands",
    "serve",
    "server_answers",
    "server_env",
    "server_spec",
]

# Every `ponder` command registers `ponder model …`; the launcher (and with it the model client)
# is loaded only when one of these names is used.
_HOME = {
    "STRUCTURED_OUTPUTS_CONFIG": "command", "ServerSpec": "command",
    "build_server_args": "command", "find_vllm_python": "command", "server_env": "command",
    "server_spec": "command", "register_commands": "commands", "detect_gpu": "gpu",
    "ServerProcess": "process", "server_answers": "readiness", "managed_server": "serving",
    "serve": "serving", "DEFAULT_MODEL_ID": "weights", "DEMO_MODEL_NAME": "weights",
    "cache_root": "weights", "demo_model_dir": "weights", "download_model": "weights",
    "prepare_demo_model": "weights",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{home}"), name)
