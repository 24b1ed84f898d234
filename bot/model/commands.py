"""`ponder model download` and `ponder model serve`."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from typing import Any

from bot.config import Settings
from bot.errors import ModelError
from bot.model.command import check_exposure, find_vllm_python, server_spec
from bot.model.gpu import detect_gpu
from bot.model.weights import DEFAULT_MODEL_ID, DEMO_MODEL_NAME, cache_root, download_model


def _cmd_download(args: argparse.Namespace, settings: Settings) -> int:
    cache = cache_root(settings, args.cache_dir)
    try:
        path = asyncio.run(download_model(args.model, cache, out=print))
    except ModelError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(path)
    return 0


async def _serve_main(args: argparse.Namespace, settings: Settings) -> int:
    api_key = settings.openai_api_key.get_secret_value()
    check_exposure(args.host, api_key, insecure=args.insecure, out=print)  # before any work
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
    from bot.model.serving import serve  # the model client (openai) only when serving

    return await serve(
        spec, python, cache, served_name=settings.model, api_key=api_key,
        ready_timeout=args.ready_timeout,
    )


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return asyncio.run(_serve_main(args, settings))
    except ModelError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
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
    srv.add_argument("--host", default="127.0.0.1",
                     help="interface to listen on (beyond this machine only with "
                          "OPENAI_API_KEY set, which the server then requires)")
    srv.add_argument("--insecure", action="store_true",
                     help="allow a --host other machines can reach without OPENAI_API_KEY")
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
