"""The model cache: one folder per ModelScope id (organisation kept), ids that could escape the
cache refused, a finished marker that says which model it is of, the old layout moved."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from bot import model
from bot.model.weights import DOWNLOAD_STAMP, local_model_dir

ROOT = Path(__file__).resolve().parents[1]


class FakeModelScope:
    """`snapshot_download` that writes a config naming the model it was asked for."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, model_id: str, *, local_dir: str) -> str:
        self.calls.append(model_id)
        Path(local_dir, "config.json").write_text(f'{{"id": "{model_id}"}}')
        return local_dir


def quiet(line: str) -> None:
    pass


async def test_the_organisation_is_part_of_the_folder(tmp_path: Path) -> None:
    fetch = FakeModelScope()
    theirs = await model.download_model("someone/Qwen2.5-7B-Instruct", tmp_path,
                                        snapshot_download=fetch, out=quiet)
    ours = await model.download_model("qwen/Qwen2.5-7B-Instruct", tmp_path,
                                      snapshot_download=fetch, out=quiet)
    assert theirs != ours  # both downloaded: neither is taken for the other
    assert fetch.calls == ["someone/Qwen2.5-7B-Instruct", "qwen/Qwen2.5-7B-Instruct"]
    assert ours == tmp_path / "models" / "qwen--Qwen2.5-7B-Instruct"
    assert (ours / "config.json").read_text() == '{"id": "qwen/Qwen2.5-7B-Instruct"}'
    assert (ours / DOWNLOAD_STAMP).read_text().strip() == "qwen/Qwen2.5-7B-Instruct"
    # Finished means finished: asked again, nothing is fetched.
    assert await model.download_model("qwen/Qwen2.5-7B-Instruct", tmp_path,
                                      snapshot_download=fetch, out=quiet) == ours
    assert len(fetch.calls) == 2


@pytest.mark.parametrize("bad", [
    "../Qwen2.5-7B-Instruct", "qwen/..", "..", "qwen/.", "/etc/passwd", "/qwen/X",
    "qwen\\X", "qwen//X", "qwen/", "/X", "X", "a/b/c", "", "qwen/X y", "C:/X",
])
async def test_ids_that_could_leave_the_cache_are_refused_in_one_line(
        tmp_path: Path, bad: str) -> None:
    cache = tmp_path / "cache"
    fetch = FakeModelScope()
    with pytest.raises(model.ModelError) as caught:
        await model.download_model(bad, cache, snapshot_download=fetch, out=quiet)
    message = caught.value.message
    assert "not a ModelScope model id" in message and "ORG/NAME" in message
    assert "\n" not in message
    assert fetch.calls == [] and not cache.exists()  # nothing was fetched or created


async def test_a_marker_of_another_model_is_not_finished(tmp_path: Path) -> None:
    # Old-layout folder `models/X` finished for someone/X: not qwen/X's download.
    legacy = tmp_path / "models" / "X"
    legacy.mkdir(parents=True)
    (legacy / DOWNLOAD_STAMP).write_text("someone/X\n")
    fetch = FakeModelScope()
    path = await model.download_model("qwen/X", tmp_path, snapshot_download=fetch, out=quiet)
    assert fetch.calls == ["qwen/X"] and path == tmp_path / "models" / "qwen--X"
    assert (legacy / DOWNLOAD_STAMP).read_text() == "someone/X\n"  # left as it was
    # Only ids that differ in `--` alone share a folder: that is refused, not mixed.
    other = local_model_dir("a--b/c", tmp_path)
    assert other == local_model_dir("a/b--c", tmp_path)
    other.mkdir(parents=True)
    (other / DOWNLOAD_STAMP).write_text("a--b/c\n")
    with pytest.raises(model.ModelError, match=r"holds the download of a--b/c, not a/b--c"):
        await model.download_model("a/b--c", tmp_path, snapshot_download=fetch, out=quiet)
    assert fetch.calls == ["qwen/X"]


async def test_a_download_in_the_old_layout_is_moved_not_fetched_again(tmp_path: Path) -> None:
    legacy = tmp_path / "models" / "Qwen2.5-7B-Instruct"
    legacy.mkdir(parents=True)
    (legacy / "model.safetensors").write_text("weights")
    (legacy / DOWNLOAD_STAMP).write_text("qwen/Qwen2.5-7B-Instruct\n")
    lines: list[str] = []

    def unreachable(model_id: str, *, local_dir: str) -> str:
        raise ConnectionError("no network in this test")

    path = await model.download_model("qwen/Qwen2.5-7B-Instruct", tmp_path,
                                      snapshot_download=unreachable, out=lines.append)
    assert path == tmp_path / "models" / "qwen--Qwen2.5-7B-Instruct"
    assert (path / "model.safetensors").read_text() == "weights"
    assert not legacy.exists()
    assert any("moved" in line for line in lines)


@pytest.mark.process
async def test_the_download_command_refuses_a_bad_id_in_one_line(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "model", "download", "--model", "../../etc",
        "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, lines
    assert lines[0].startswith("error: '../../etc' is not a ModelScope model id")
    assert not (tmp_path / "cache").exists()
