"""Is there a GPU to serve the real model on? nvidia-smi first, torch when it is missing."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import shutil

log = logging.getLogger(__name__)


async def detect_gpu(limit: float = 5.0) -> str | None:
    """A short description of the first GPU, or None when there is none."""
    if shutil.which("nvidia-smi"):
        found = await _nvidia_smi(limit)
        if found is not None:
            return found
    if importlib.util.find_spec("torch") is not None:
        try:
            # Importing torch and initialising CUDA is slow: far more time than nvidia-smi.
            return await asyncio.wait_for(asyncio.to_thread(_torch_gpu), limit * 6)
        except Exception:
            # No GPU is a fine answer; why torch could not tell belongs in a debug log only.
            log.debug("torch could not look for a GPU", exc_info=True)
            return None
    return None


async def _nvidia_smi(limit: float) -> str | None:
    try:
        proc = await asyncio.create_subprocess_exec(
            "nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        log.debug("nvidia-smi is on PATH but would not start", exc_info=True)
        return None
    try:
        stdout, _ = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        log.debug("nvidia-smi gave no answer within %.0f s", limit)
        proc.kill()
        await proc.wait()
        stdout = b""
    lines = [line.strip() for line in stdout.decode(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    if proc.returncode == 0 and lines:
        extra = f" (+{len(lines) - 1} more)" if len(lines) > 1 else ""
        return lines[0] + extra
    return None


def _torch_gpu() -> str | None:
    import torch

    if torch.cuda.is_available():
        return str(torch.cuda.get_device_name(0))
    return None
