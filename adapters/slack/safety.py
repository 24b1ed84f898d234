"""The one function that keeps a Slack payload from pinging anyone, and the walk that applies
it to every string of every payload the Web API client sends (`adapters/slack/web.py`).

Slack notifies on its control sequences — `<!channel>`, `<!here>`, `<!everyone>`,
`<!subteam^S…>`, `<@U…>` (and links a channel with `<#C…>`) — wherever a text field is read as
mrkdwn: a message's text, blocks' text objects, task cards' titles, details and output,
streamed markdown, ephemeral messages, an assistant status. Model text is escaped where it is
rendered (`mrkdwn.to_mrkdwn`, the stream's text), but a field someone forgets (a task card's
title did) must still not ping: so the client passes every payload through `defused` on its
way out, whatever built it.

`defuse` is idempotent and keeps what Ponder means: an escaped `&lt;` stays as it is, and a
link Ponder made (`<https://…|label>`, `<mailto:…>`) stays a link; any other `<` becomes
`&lt;`, so no control sequence can open. A bare `@channel` / `@here` / `@everyone` word (which
some of Slack's surfaces turn into a mention) gets an invisible word joiner after its `@`.
"""

from __future__ import annotations

import re
from typing import Any

# A link as mrkdwn writes one: `<url>` or `<url|label>`, with nothing in it that opens
# another sequence.
_LINK = re.compile(r"<(?:https?://|mailto:)[^<>|\s]+(?:\|[^<>]*)?>")
_OPEN = re.compile(r"<")
_MASS = re.compile(r"(?<![\w@.+-])@(channel|here|everyone)(?![\w-]|\.\w)", re.IGNORECASE)
_JOINER = "\u2060"  # WORD JOINER: invisible, and no longer the word Slack looks for


def defuse(text: str) -> str:
    """`text` with no way left to notify anyone (see the module's docstring)."""
    if "<" in text:
        parts: list[str] = []
        start = 0
        for link in _LINK.finditer(text):
            parts.append(_OPEN.sub("&lt;", text[start:link.start()]))
            parts.append(_mass(link.group(0)))
            start = link.end()
        parts.append(_OPEN.sub("&lt;", text[start:]))
        text = "".join(parts)
    return _mass(text)


def _mass(text: str) -> str:
    return _MASS.sub(lambda m: f"@{_JOINER}{m.group(1)}", text) if "@" in text else text


def defused(value: Any) -> Any:
    """Every string in a payload (nested dicts and lists: blocks, chunks, attachments)
    defused; anything else unchanged. The caller's objects are not modified."""
    if isinstance(value, str):
        return defuse(value)
    if isinstance(value, dict):
        return {key: defused(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [defused(item) for item in value]
    return value

