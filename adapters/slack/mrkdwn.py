"""Markdown (what the model writes) -> Slack mrkdwn (what Slack shows), made safe.

Slack's own markup is small: `*bold*`, `_italic_`, `~strike~`, `` `code` ``, fenced blocks,
`<url|label>` links, `>` quotes. Everything else in model text is plain text, and `&`, `<`, `>`
must be escaped everywhere (inside code too) — which is also what keeps `<!channel>`, `<!here>`
and `<@U…>` written by a model from ever notifying anyone.
"""

from __future__ import annotations

import re

from bot.links import deceptive

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(?!\[[ xX]\]\s)(.*)$")
_TASK = re.compile(r"^(\s*)[-*+]\s+\[([ xX])\]\s+(.*)$")
_ORDERED = re.compile(r"^(\s*)(\d{1,9})[.)]\s+(.*)$")
_QUOTE = re.compile(r"^\s{0,3}>\s?(.*)$")
_RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"\[([^\]\n]+)\]\(\s*((?:https?://|mailto:)[^\s)]+)(?:\s+\"[^\"]*\")?\s*\)")
# `<url>`, and Slack's own `<url|text>` when the model writes it.
_AUTOLINK = re.compile(
    r"&lt;((?:https?://|mailto:)[^\s&|]+(?:&amp;[^\s&|]+)*)(?:\|([^\n]*?))?&gt;")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_ITALIC_STAR = re.compile(r"(?<![*\w])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![*\w])")
_ITALIC_UNDER = re.compile(r"(?<![_\w])_(?=[^\s_])(.+?)(?<=[^\s_])_(?![_\w])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")

# Placeholders that cannot occur in text (private-use characters).
_B = "\ue000"  # bold marker while italics are converted
_CODE = "\ue001"  # stands for a protected code span / link, by index


def escape(text: str) -> str:
    """Slack's three control characters, escaped (the order matters: `&` first)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_mrkdwn(markdown: str) -> str:
    out: list[str] = []
    in_fence = False
    for line in markdown.split("\n"):
        if _FENCE.match(line):
            # Slack shows a fence's language tag as text: drop it.
            in_fence = not in_fence
            out.append("```")
            continue
        if in_fence:
            out.append(escape(line))
            continue
        out.append(_line(line))
    return "\n".join(out)


def _line(line: str) -> str:
    if _RULE.match(line):
        return "──────────"
    if m := _HEADING.match(line):
        return f"*{_inline(_strip_emphasis(m.group(1)))}*"
    if m := _QUOTE.match(line):
        return "> " + _line(m.group(1)) if m.group(1) else ">"
    if m := _TASK.match(line):
        box = "☑" if m.group(2).lower() == "x" else "☐"
        return f"{_indent(m.group(1))}{box} {_inline(m.group(3))}"
    if m := _BULLET.match(line):
        depth = len(m.group(1).expandtabs(4)) // 2
        bullet = "•" if depth == 0 else ("◦" if depth == 1 else "▪")
        return f"{_indent(m.group(1))}{bullet} {_inline(m.group(2))}"
    if m := _ORDERED.match(line):
        return f"{_indent(m.group(1))}{m.group(2)}. {_inline(m.group(3))}"
    return _inline(line)


def _indent(spaces: str) -> str:
    depth = len(spaces.expandtabs(4)) // 2
    return "    " * depth


def _inline(text: str) -> str:
    protected: list[str] = []

    def keep(value: str) -> str:
        protected.append(value)
        return f"{_CODE}{len(protected) - 1}{_CODE}"

    # Code spans first: nothing inside them is formatting.
    text = _CODE_SPAN.sub(lambda m: keep("`" + escape(m.group(2)) + "`"), text)
    text = escape(text)
    text = _LINK.sub(lambda m: keep(_link(m.group(2), m.group(1))), text)
    text = _AUTOLINK.sub(
        lambda m: keep(_link(m.group(1), m.group(2)) if m.group(2) else f"<{m.group(1)}>"), text)
    text = _BOLD.sub(lambda m: f"{_B}{m.group(2)}{_B}", text)
    text = _ITALIC_STAR.sub(r"_\1_", text)
    text = _ITALIC_UNDER.sub(r"_\1_", text)
    text = _STRIKE.sub(r"~\1~", text)
    text = text.replace(_B, "*")
    return re.sub(f"{_CODE}(\\d+){_CODE}", lambda m: protected[int(m.group(1))], text)


def _link(url: str, label: str) -> str:
    # The text is already escaped; a `|` or `>` in the URL would end Slack's link early.
    url = url.replace("|", "%7C")
    if deceptive(_unescape(label), _unescape(url)):
        return f"<{url}>"  # its text names another address: show where it really goes
    label = _strip_emphasis(label).replace("|", "¦")
    return f"<{url}|{label}>"


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _strip_emphasis(text: str) -> str:
    return text.replace("**", "").replace("__", "")
