"""`ponder eval`: the built-in set, the judge, Wilson intervals, and whole runs against the fake
model answering each question right or wrong on purpose (`FakeOpenAI.answer`), so every
accuracy, interval and per-kind figure is known exactly."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pytest

from bot.cli import build_parser
from bot.evaluate.command import run_eval
from bot.evaluate.judge import judge
from bot.evaluate.report import figures, summarise
from bot.evaluate.runner import Result, Runner
from bot.evaluate.sets import KINDS, Item, SetError, builtin, load_jsonl
from bot.evaluate.stats import wilson
from bot.llm import LLMClient
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAI, Fault

ROOT = Path(__file__).resolve().parents[1]

# Four questions; the fake answers each directly (plain) and in a chain as scripted here.
ITEMS = [
    Item("Q1: what is 6 × 7?", "42", "arithmetic"),
    Item("Q2: what is 12 × 12?", "144", "arithmetic"),
    Item("Q3: which weekday follows Thursday?", "Friday", "weekday"),
    Item("Q4: is 221 prime?", "no", "yesno"),
]


def script_answers(fake: FakeOpenAI) -> None:
    # plain: 1 of 4 right · chain: 3 of 4 right (the votes: all chains answer alike).
    fake.answer("Q1", "**42**", direct="The answer is 24.")
    fake.answer("Q2", "**144**", direct="144")
    fake.answer("Q3", "It is **Friday**.", direct="Saturday, I think.")
    fake.answer("Q4", "Yes: 221 is prime.", direct="Yes.")


async def run(fake: FakeOpenAI, items: list[Item], modes: tuple[str, ...], *,
              votes: int = 3, concurrency: int = 8, **overrides: object) -> list[Result]:
    settings = make_settings(fake.base_url, min_steps=1, max_steps=3, **overrides)
    llm = LLMClient(settings, retry_base_delay=0.01)
    try:
        runner = Runner(llm, settings, votes=votes, concurrency=concurrency)
        return await runner.run(items, modes)  # type: ignore[arg-type]
    finally:
        await llm.close()


# --- the parts -----------------------------------------------------------------------------


def test_wilson_interval_matches_known_values() -> None:
    # Reference values: statsmodels' proportion_confint(method="wilson") and Wilson (1927).
    low, high = wilson(8, 10)
    assert low == pytest.approx(0.4901625, abs=1e-6) and high == pytest.approx(0.9433178, abs=1e-6)
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.4038315, abs=1e-6) and high == pytest.approx(0.5961685, abs=1e-6)
    assert wilson(0, 10) == (0.0, pytest.approx(0.2775328, abs=1e-6))
    assert wilson(10, 10) == (pytest.approx(0.7224672, abs=1e-6), 1.0)
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson(3, 2)


@pytest.mark.parametrize(("answer", "expected", "right"), [
    ("**5,535**", "5535", True),
    ("123 × 45 = 5535", "5535", True),
    ("The answer is 5536.", "5535", False),
    ("There are 3 r's in strawberry.", "3", True),
    ("单词 strawberry 中有3个字母 r。", "3", True),
    ("字母 r 一共出现了三次。", "3", True),
    ("9.9 is larger than 9.11.", "9.9", True),  # a comparison leads with the winner
    ("9.11 is larger than 9.9.", "9.9", False),
    ("3.50", "3.5", True),
    ("It will be a **Sunday**.", "Sunday", True),
    ("100 天之后是星期日。", "Sunday", True),
    ("星期五", "星期五", True),
    ("Monday", "Sunday", False),
    ("No, 221 = 13 × 17.", "no", True),
    ("是的，它是质数。", "no", False),
    ("(B)", "B", True),
    ("The capital of France is Paris.", "Paris", True),
    ("Lyon is the capital of France.", "Paris", False),
    ("**New York City**", "new york city", True),
    ("", "42", False),
])
def test_the_judge_reads_the_answer_a_user_sees(answer: str, expected: str, right: bool) -> None:
    assert judge(answer, expected) is right


def test_builtin_set_is_seeded_mixed_and_checkable() -> None:
    items = builtin(24, seed=7)
    assert items == builtin(24, seed=7)
    assert items != builtin(24, seed=8)
    assert [i.kind for i in items[:6]] == list(KINDS)
    for kind in KINDS:  # every kind in both languages
        mine = [i for i in items if i.kind == kind]
        assert any(re.search(r"[\u4e00-\u9fff]", i.question) for i in mine), kind
        assert any(not re.search(r"[\u4e00-\u9fff]", i.question) for i in mine), kind
    for item in items:
        assert judge(item.answer, item.answer), item  # every answer reads as itself
        if item.kind == "letters" and "letter" in item.question:
            letter, word = re.findall(r'"(\w+)"', item.question)
            assert item.answer == str(word.count(letter))
        if item.kind == "arithmetic" and item.question.startswith("What is"):
            a, _, b, sign, c = re.findall(r"\d+|[×+−]", item.question)
            value = int(a) * int(b) + (int(c) if sign == "+" else -int(c))
            assert item.answer == str(value)
        if item.kind == "decimals":
            numbers = re.findall(r"\d+\.\d+", item.question)
            assert item.answer == max(numbers, key=float)
            assert max(numbers, key=len) != item.answer  # the longer one looks larger


def test_jsonl_sets_are_read_and_bad_lines_named(tmp_path: Path) -> None:
    good = tmp_path / "set.jsonl"
    good.write_text('{"question": "2+2?", "answer": 4, "kind": "add"}\n\n# a comment\n'
                    '{"question": "Capital of France?", "answer": "Paris"}\n', encoding="utf-8")
    assert load_jsonl(good) == [Item("2+2?", "4", "add"), Item("Capital of France?", "Paris")]
    assert load_jsonl(good, n=1) == [Item("2+2?", "4", "add")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "2+2?", "answer": 4}\n{"question": "no answer"}\n',
                   encoding="utf-8")
    with pytest.raises(SetError, match=r"bad\.jsonl:2: `answer`"):
        load_jsonl(bad)
    with pytest.raises(SetError, match="cannot read"):
        load_jsonl(tmp_path / "missing.jsonl")


# --- whole runs against the fake model ------------------------------------------------------


async def test_accuracies_intervals_and_kinds_are_exact(fake_llm: FakeOpenAI) -> None:
    script_answers(fake_llm)
    fake_llm.auto_steps = 2
    results = await run(fake_llm, ITEMS, ("plain", "chain", "vote"), votes=3)
    summary = summarise(results, ("plain", "chain", "vote"))
    modes = summary["modes"]
    assert list(modes) == ["plain", "chain", "vote"]
    expected = {"plain": 1, "chain": 3, "vote": 3}
    for mode, correct in expected.items():
        f = modes[mode]
        assert (f["correct"], f["total"], f["failed"]) == (correct, 4, 0)
        assert f["accuracy"] == correct / 4
        assert (f["low"], f["high"]) == wilson(correct, 4)
    assert modes["plain"]["mean_steps"] == 0 and modes["chain"]["mean_steps"] == 2
    # Tokens are the server's own `usage` (the fake: characters // 4 + 1 per reply).
    plain_tokens = [len(t) // 4 + 1 for t in ("The answer is 24.", "144", "Saturday, I think.",
                                                "Yes.")]
    assert modes["plain"]["mean_tokens"] == sum(plain_tokens) / 4
    assert modes["vote"]["mean_tokens"] > 2.5 * modes["chain"]["mean_tokens"]
    kinds = modes["chain"]["by_kind"]
    assert list(kinds) == ["arithmetic", "weekday", "yesno"]
    assert (kinds["arithmetic"]["correct"], kinds["arithmetic"]["total"]) == (2, 2)
    assert (kinds["yesno"]["correct"], kinds["yesno"]["total"]) == (0, 1)
    assert (kinds["yesno"]["low"], kinds["yesno"]["high"]) == wilson(0, 1)
    assert modes["plain"]["by_kind"]["arithmetic"]["correct"] == 1
    votes = [r.votes for r in results if r.mode == "vote"]
    assert all(v is not None and (v.agree, v.total) == (3, 3) for v in votes)
    # One JSON object of the documented shape.
    text = json.dumps(summary)
    shape = json.loads(text)["modes"]["vote"]
    assert set(shape) >= {"accuracy", "low", "high", "correct", "total", "mean_steps",
                          "mean_seconds", "mean_tokens", "by_kind"}
    assert set(shape["by_kind"]["weekday"]) >= {"accuracy", "low", "high", "correct", "total"}


async def test_a_failed_request_counts_as_wrong_and_is_reported(fake_llm: FakeOpenAI) -> None:
    fake_llm.answer("Q1", "**42**", direct="42")
    fake_llm.answer("Q2", Fault(500), direct=Fault(500))
    progress: list[Result] = []
    settings = make_settings(fake_llm.base_url, min_steps=1, max_steps=2, max_attempts=2)
    llm = LLMClient(settings, retry_base_delay=0.01)
    try:
        results = await Runner(llm, settings, concurrency=4).run(
            ITEMS[:2], ("plain", "chain"), progress.append)
    finally:
        await llm.close()
    assert len(progress) == 4 and sorted(map(id, progress)) == sorted(map(id, results))
    failed = [r for r in results if r.error is not None]
    assert [(r.item.question, r.mode, r.correct) for r in failed] == [
        (ITEMS[1].question, "plain", False), (ITEMS[1].question, "chain", False)]
    # The server's own failure, as the chain reported it (not a crash of the eval).
    assert all("500" in (r.error or "") and "internal" not in (r.error or "") for r in failed)
    summary = summarise(results, ("plain", "chain"))
    assert summary["modes"]["chain"]["correct"] == 1 and summary["modes"]["chain"]["failed"] == 1
    assert summary["modes"]["chain"]["total"] == 2
    assert [(f["mode"], f["item"]) for f in summary["failures"]] == [("plain", 2), ("chain", 2)]


async def test_questions_run_concurrently_up_to_the_limit(fake_llm: FakeOpenAI) -> None:
    fake_llm.chunk_delay, fake_llm.chunk_chars = 0.03, 2  # each answer takes ~0.4 s
    items = [Item(f"Q{n}: what is {n} + {n}?", str(2 * n), "add") for n in range(6)]
    for n in range(6):
        fake_llm.answer(f"Q{n}:", f"**{2 * n}**", direct=f"The sum is {2 * n}, clearly.")
    await run(fake_llm, items, ("plain",), concurrency=3)
    assert fake_llm.stats.peak_active == 3  # overlapping requests, and never more than asked
    fake_llm.stats.peak_active = 0
    await run(fake_llm, items[:2], ("plain",), concurrency=1)
    assert fake_llm.stats.peak_active == 1


def test_figures_of_nothing_are_defined() -> None:
    assert figures([]) == {"accuracy": 0.0, "low": 0.0, "high": 1.0, "correct": 0, "total": 0,
                           "failed": 0, "mean_steps": 0.0, "mean_seconds": 0.0,
                           "mean_tokens": None}


# --- the command ---------------------------------------------------------------------------


async def ponder(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.process
async def test_ponder_eval_json_through_the_cli(fake_llm: FakeOpenAI, tmp_path: Path) -> None:
    script_answers(fake_llm)
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps({"question": i.question, "answer": i.answer,
                                        "kind": i.kind}) + "\n" for i in ITEMS),
                    encoding="utf-8")
    env = {"OPENAI_BASE_URL": fake_llm.base_url, "PONDER_MIN_STEPS": "1"}
    code, out, err = await ponder("eval", "--set", str(path), "--modes", "plain,chain",
                                  "--concurrency", "4", "--json", env=env)
    assert code == 0, err
    summary = json.loads(out)  # one object, and nothing else on stdout
    assert list(summary["modes"]) == ["plain", "chain"]
    assert summary["modes"]["plain"]["correct"] == 1 and summary["modes"]["chain"]["correct"] == 3
    assert summary["modes"]["chain"]["low"] == pytest.approx(wilson(3, 4)[0])
    assert summary["n"] == 4 and summary["failures"] == []



async def test_ponder_eval_prints_tables(fake_llm: FakeOpenAI, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    script_answers(fake_llm)
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps({"question": i.question, "answer": i.answer,
                                        "kind": i.kind}) + "\n" for i in ITEMS),
                    encoding="utf-8")
    # Served under the configured name, as the CPU demo is: the figures name what it runs.
    fake_llm.root = "/cache/models/HuggingFaceTB--SmolLM2-135M-Instruct"
    settings = make_settings(fake_llm.base_url, min_steps=1)
    code = await run_eval(settings, set_name=str(path), n=None, modes=("plain", "chain"),
                          votes=5, concurrency=4, seed=0, as_json=False)
    out = capsys.readouterr().out
    assert code == 0
    assert "95% CI" in out and "by kind" in out
    assert "(serving HuggingFaceTB--SmolLM2-135M-Instruct)" in " ".join(out.split()), out
    chain_row = next(line for line in out.splitlines() if line.lstrip("│ ").startswith("chain"))
    assert "75.0%" in chain_row and "3/4" in chain_row


def test_ponder_eval_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for args in (["--modes", "plain,guess"], ["--votes", "1"], ["--concurrency", "0"]):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(["eval", *args])
        assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "modes are some of plain,chain,vote" in err and "from 2 to 9" in err
    assert parser.parse_args(["eval", "--modes", "vote,plain"]).modes == ("vote", "plain")
