"""What Ponder says to the model, in English and Chinese, chosen by the question's language."""

from __future__ import annotations

import re

from bot.events import Language

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# Hiragana, katakana (with its phonetic extensions) and half-width katakana: Japanese. Not
# the katakana middle dot `・`, which Chinese text uses in foreign names too.
_KANA = re.compile(r"[\u3041-\u309f\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff\uff66-\uff9d]")
_LATIN_WORD = re.compile(r"[A-Za-z]{2,}")


def detect_language(text: str) -> Language:
    """Chinese when Han characters outweigh Latin words (code and names in a Chinese
    question stay Latin, so words are compared with characters, not letters).

    Japanese writes Han characters too, but never without kana: text with kana (at least one
    for every five Han characters, so a stray `の` in Chinese does not count) is not Chinese.
    The prompts are English or Chinese, so it gets the English ones, which ask the model to
    write in the language of the question; kanji-only text cannot be told from Chinese."""
    han = len(_CJK.findall(text))
    if han and len(_KANA.findall(text)) * 5 >= han:
        return "en"
    words = len(_LATIN_WORD.findall(text))
    return "zh" if han and han >= words else "en"


_SYSTEM = {
    "en": """\
You are Ponder, a careful problem solver who thinks out loud, one step per reply.

Every reply is one JSON object and nothing else:
{{"title": "<a few words naming what this step does>", \
"content": "<this step's reasoning, in Markdown>", \
"next_action": "continue" or "final_answer"}}

How to reason:
- Take at least {min_steps} distinct steps before you choose "final_answer"; you have at most \
{max_steps}.
- Begin by restating the problem: what is given, what is asked, what could be misread.
- Each step moves the work forward. Never repeat an earlier step.
- Where you can, solve the problem a second way and compare the results.
- Before you finish, check the result: recompute it, try an edge case, look for a mistake \
in an earlier step and say plainly if you find one.
- Say how sure you are and why. Say what you cannot know (live data, private facts).
- Write the content in the language of the question.

Example of one reply:
{{"title": "Counting letter by letter", "content": "Spelling the word out: s-t-r-a-w-b-e-r-r-y. \
The letter r appears at positions 3, 8 and 9.", "next_action": "continue"}}""",
    "zh": """\
你是 Ponder，一个把思考过程说出来的细心解题者，每次回复只写一步。

每次回复只包含一个 JSON 对象，不要有其他文字：
{{"title": "<用几个字概括这一步在做什么>", \
"content": "<这一步的推理，使用 Markdown>", \
"next_action": "continue" 或 "final_answer"}}

推理要求：
- 在选择 "final_answer" 之前，至少完成 {min_steps} 个不同的步骤；最多 {max_steps} 步。
- 第一步先复述问题：已知什么、要求什么、哪里容易误解。
- 每一步都要推进，不要重复之前的步骤。
- 条件允许时，用第二种方法求解并比较结果。
- 结束前检验结果：重新计算、试一个边界情况、检查前面的步骤是否有错，发现错误要直接指出。
- 说明你有多确定以及原因；说明哪些内容你无法知道（实时数据、私人信息）。
- 用提问所用的语言书写内容。

一次回复的示例：
{{"title": "逐个字母数", \
"content": "把单词拆开：s-t-r-a-w-b-e-r-r-y。字母 r 出现在第 3、8、9 位。", \
"next_action": "continue"}}""",
}

_NEXT = {
    "en": "Go on with step {n}.",
    "zh": "请继续第 {n} 步。",
}

_NOT_YET = {
    "en": "Not yet: before finishing, check the result another way. Go on with step {n}.",
    "zh": "还不能结束：请先用另一种方法检验结果。请继续第 {n} 步。",
}

_FINAL = {
    "en": (
        "Now write the final answer for the person who asked. Use plain Markdown, not JSON. "
        "Lead with the answer itself, then give a short justification. "
        "Do not refer to the steps by number."
    ),
    "zh": (
        "现在请为提问者写出最终答案。使用普通的 Markdown，不要用 JSON。"
        "先直接给出答案，再简要说明理由。不要按编号提及前面的步骤。"
    ),
}


def system_prompt(language: Language, min_steps: int, max_steps: int) -> str:
    return _SYSTEM[language].format(min_steps=min_steps, max_steps=max_steps)


def next_step(language: Language, n: int) -> str:
    return _NEXT[language].format(n=n)


def not_yet(language: Language, n: int) -> str:
    return _NOT_YET[language].format(n=n)


def final_request(language: Language) -> str:
    return _FINAL[language]
