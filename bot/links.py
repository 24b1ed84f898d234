"""Links whose text names one address while they lead to another.

A model can be led to write `[https://acme.slack.com/sso](https://evil.example)`: the reader
sees Acme's address and lands somewhere else. Every front door asks `deceptive(text, target)`
before it shows a link with its own text; when the text names an address (a URL, `www.…`, a
domain, an e-mail address) that is not where the link goes, the reader is shown where it goes
instead (`shown_target`). Links with ordinary words as their text stay as they are.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import urlsplit

# Endings people read as a domain even without `https://` or a path. Any other dotted word
# (`os.path.join`, `numpy.linalg.norm`) is taken for code, unless a scheme, `www.`, a port or a
# path says it is an address; two-letter endings are country domains.
_TLDS = frozenset(
    "com org net edu gov mil int io ai app dev co me info biz xyz site online tech cloud store "
    "shop page link live top club pro blog news email support help login security services "
    "account accounts bank finance pay money wallet crypto internal local corp lan home".split()
)
# ... except a single dotted name with one of these endings, which is a file (`README.md`,
# `setup.py`), however many countries own them as domains.
_FILE_TYPES = frozenset("md py sh rs js ts go rb pl pm cc hh cs fs db gz bz xz ps so mk".split())

_LABEL = r"[^\W_](?:[\w-]{0,61}[^\W_])?"
_HOST_TOKEN = re.compile(
    rf"^(?P<host>(?:{_LABEL}\.)+(?P<tld>[^\W\d_]{{2,63}}|xn--[a-z0-9-]{{1,59}}))\.?"
    r"(?P<port>:\d{1,5})?(?P<rest>[/?#]\S*)?$",
    re.IGNORECASE,
)
_IPV4_TOKEN = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?(?:[/?#]\S*)?$")
_EMAIL_TOKEN = re.compile(rf"^[\w.+-]+@(?:{_LABEL}\.)+[^\W\d_]{{2,63}}$", re.IGNORECASE)
# Punctuation around an address in running text, and Markdown emphasis around it.
_EDGES = "*_~`'\"()[]{}<>.,;:!?¡¿“”‘’«»"
# Dots that browsers and IDNA read as `.`.
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def deceptive(text: str, target: str) -> bool:
    """Whether a link showing `text` but leading to `target` misleads about where it goes:
    its text names an address (anywhere in it) that the target is not."""
    goes = _parts(target)
    if goes is None:
        return False  # not a web or mail address: no platform makes a link of it
    return any(not _same_place(named, goes) for named in _addresses(text))


def shown_target(target: str) -> str:
    """The target as the reader should see it in place of a misleading text."""
    return target.strip().strip("<>")


def honest_markdown(markdown: str) -> str:
    """Markdown with every misleading `[text](target)` link shown as its target (`<target>`);
    code spans and fenced blocks are left as they are (no platform makes links in them)."""
    out: list[str] = []
    last = 0
    for code in _CODE.finditer(markdown):
        out.append(_LINK.sub(_honest_link, markdown[last:code.start()]))
        out.append(code.group(0))
        last = code.end()
    out.append(_LINK.sub(_honest_link, markdown[last:]))
    return "".join(out)


def honest_so_far(markdown: str) -> str:
    """What of a Markdown text still being written can be shown now, honest links included:
    a link not finished yet (`[text` or `[text](https://ev`) is held back until its target is
    whole, since only then can it be told whether its text misleads. For streams that only
    ever append (Slack's streaming messages): what is shown is never taken back."""
    shown = honest_markdown(markdown)
    unfinished = _OPEN_LINK.search(shown)
    return shown if unfinished is None else shown[:unfinished.start()]


# A `[` that may still become a link: its text, and maybe `](` and part of a target, up to the
# end of what has been written so far.
_OPEN_LINK = re.compile(r"\[[^\[\]\n]*(?:\](?:\([^)\s]*)?)?$")


# The link rule of the Markdown parser Discord uses (simple-markdown): nested brackets in the
# text, balanced parentheses and `<…>` around the target, an optional title.
_LINK = re.compile(
    r"\[(?P<text>(?:\[[^\]]*\]|[^\[\]]|\](?=[^\[]*\]))*)\]"
    r"\(\s*<?(?P<target>(?:\([^)]*\)|[^\s\\])*?)>?(?:\s+['\"][\s\S]*?['\"])?\s*\)"
)
_CODE = re.compile(r"```[\s\S]*?```|(`+)(?!`)[\s\S]+?(?<!`)\1(?!`)")


def _honest_link(match: re.Match[str]) -> str:
    target = shown_target(match.group("target"))
    if not deceptive(match.group("text"), target):
        return match.group(0)
    return f"<{target.replace('>', '%3E')}>"


# --- what an address is ------------------------------------------------------------------------


def _plain(text: str) -> str:
    """Text as a reader perceives it: full-width forms folded, invisible characters and
    Markdown escapes gone."""
    text = unicodedata.normalize("NFKC", text).translate(_DOTS)
    return "".join(ch for ch in text if ch != "\\" and unicodedata.category(ch) != "Cf")


def _addresses(text: str) -> list[tuple[str, str, bool]]:
    found: list[tuple[str, str, bool]] = []
    for raw in _plain(text).split():
        parts = _parts(raw.strip(_EDGES), loose=True)
        if parts is not None:
            found.append(parts)
    return found


def _parts(token: str, *, loose: bool = False) -> tuple[str, str, bool] | None:
    """(host or mailbox, rest, whether it names more than a site) of an address, or None.

    `loose`: also addresses written without a scheme, as people write them in text."""
    token = token.strip()
    lowered = token.lower()
    if lowered.startswith("mailto:"):
        return ("mailto:" + lowered[7:].split("?", 1)[0], "", True)
    if "://" not in token:
        if not loose:
            return None
        if _EMAIL_TOKEN.match(token):
            return ("mailto:" + lowered, "", True)
        named = lowered.startswith("www.") or _IPV4_TOKEN.match(token)
        if not (named or _looks_like_domain(token)):
            return None
        token = "http://" + token
    try:
        parts = urlsplit(token)
        host = (parts.hostname or "").rstrip(".")
    except ValueError:
        return None
    if not host:
        return None
    try:
        host = host.encode("idna").decode("ascii")  # `bücher.de` and `xn--bcher-kva.de` alike
    except UnicodeError:
        pass
    host = host.lower().removeprefix("www.")
    rest = parts.path.rstrip("/")
    if parts.query:
        rest += "?" + parts.query
    if parts.fragment:
        rest += "#" + parts.fragment
    return (host, rest, bool(rest))


def _looks_like_domain(token: str) -> bool:
    m = _HOST_TOKEN.match(token)
    if m is None:
        return False
    if m.group("port") or m.group("rest"):
        return True
    tld = m.group("tld").lower()
    if tld.startswith("xn--") or tld in _TLDS:
        return True
    if len(tld) == 2 and tld.isascii():
        return not (m.group("host").count(".") == 1 and tld in _FILE_TYPES)
    return False


def _same_place(named: tuple[str, str, bool], goes: tuple[str, str, bool]) -> bool:
    named_host, named_rest, specific = named
    host, rest, _ = goes
    if not specific:
        # A site named by its domain: any page of it, or of its subdomains, is that site.
        return host == named_host or host.endswith("." + named_host)
    if host != named_host:
        return False
    return rest == named_rest or rest.startswith(named_rest + "/")
