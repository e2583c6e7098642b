"""The prompt-injection screen: a curated set of named patterns over normalised text.

A screen is a tripwire, not a guarantee: it catches the common phrasings of instruction
overrides, role-tag injection, requests to reveal instructions or secrets, tool-call
spoofing and hidden text, including trivially obfuscated variants. It cannot catch a
paraphrase it has no pattern for.

Text is normalised before matching: Unicode tag characters are decoded to the ASCII they
hide, invisible characters (zero-width, bidi controls, soft hyphen, variation selectors)
are removed, then NFKC (fullwidth and mathematical letters become ASCII), casefolding, a
small map of Cyrillic and Greek look-alikes, and runs of whitespace collapsed. Three
patterns look at the raw text instead, for the hiding itself. Every pattern is built of
bounded repetitions, so matching stays linear in the length of the text.
"""

from __future__ import annotations

import binascii
import functools
import re
import unicodedata
from dataclasses import dataclass

from agentmill.logs import strip_controls

__all__ = ["PATTERN_NAMES", "Finding", "excerpt", "normalise", "screen"]

_DET = r"(?:(?:all|any|every|the|your|my|our|of|these|those|that|this|its)\s)"
_EARLIER = (
    r"(?:previous|prior|above|earlier|preceding|former|original|initial|foregoing"
    r"|system|safety|developer|your)"
)
_RULES = (
    r"(?:instructions?|prompts?|directions?|directives?|rules|guidelines|guidance|context"
    r"|commands|messages|constraints|orders|policies)"
)
_WORD = r"(?:\S{1,30}\s)"
"""Any one word and the space after it; bounded so a match never backtracks far."""
_TELL = (
    r"(?:print|reveal|repeat|output|show|display|tell\sme|give\sme|leak|dump|disclose"
    r"|write\sout|recite|what\s(?:is|are))"
)
_BECOME = (
    r"(?:you\sare\snow|from\snow\son,?\syou\sare|pretend\s(?:to\sbe|you\sare)"
    r"|act\sas\sif\syou\sare|you\swill\snow\sact\sas)"
)

_TEXT_PATTERNS: dict[str, str] = {
    "ignore-previous-instructions": (
        rf"\b(?:ignore|forget)\s{_DET}{{0,3}}{_EARLIER}\s{_WORD}?{_RULES}\b"
        r"|\b(?:ignore|forget|disregard)\s(?:everything|anything|all)\s(?:(?:that|which)\s)?"
        r"(?:above|before\sthis|you\s(?:were|have\sbeen)\s(?:told|given|instructed))"
    ),
    "disregard-instructions": (
        rf"\b(?:disregard|neglect|bypass|do\snot\sfollow|don'?t\sfollow|stop\sfollowing"
        rf"|pay\sno\sattention\sto)\s{_DET}{{0,3}}{_EARLIER}\s{_WORD}?{_RULES}\b"
    ),
    "you-are-now": (
        rf"\b{_BECOME}\s(?:dan|jailbroken|unrestricted|unfiltered|uncensored"
        r"|in\s(?:developer|god|dan|jailbreak)\smode)\b"
        rf"|\b{_BECOME}\s(?:a|an|my|acting\sas|playing)\s{_WORD}{{0,3}}?"
        r"(?:ai|assistant|model|bot|chatbot|persona|character|agent|dan|hacker)\b"
    ),
    "remove-restrictions": (
        r"\bno\slonger\s(?:bound|restricted|limited|constrained)\sby\b"
        r"|\byou\shave\sno\s(?:restrictions|rules|limits|guidelines|filters)\b"
    ),
    "jailbreak-mode": (
        r"\b(?:do\sanything\snow|jailbreak(?:ed)?\smode|dan\smode"
        r"|(?:developer|god)\smode\s(?:enabled|activated|on))\b"
    ),
    "new-instructions": (
        r"\b(?:new|real|actual|secret|hidden)\s(?:system\s)?(?:instructions|directives?|prompt)"
        r"\s?:"
    ),
    "fake-system-message": (
        r"(?:^|\n)[\[(*]{0,2}(?:system|admin)\s(?:override|message|instructions?|notice)"
        r"[\])*]{0,2}\s?:"
    ),
    "role-header": r"(?:^|\n)#{1,4}\s?(?:system|assistant)\s?:",
    "chat-template-token": (
        r"<\|(?:im_start|im_end|im_sep|system|user|assistant|endoftext|end_of_text|eot_id"
        r"|eom_id|start_header_id|end_header_id|begin_of_text)\|>"
        r"|\[/?inst\]|<</?sys>>|<(?:start|end)_of_turn>"
    ),
    "print-your-instructions": (
        rf"\b{_TELL}\s(?:(?:me|us)\s)?your\s{_WORD}{{0,2}}?"
        r"(?:instructions|system\s(?:prompt|message)|initial\sprompt|original\sprompt"
        r"|hidden\sprompt|prompt|rules|guidelines)\b"
        r"|\b(?:repeat|print|output|reveal|recite)\s(?:everything|all\s(?:the\s)?text"
        r"|the\s(?:text|words))\s(?:above|before)\b"
    ),
    "reveal-system-prompt": (
        r"\b(?:reveal|leak|dump|disclose|print|output|repeat|recite)\s(?:me\s)?(?:the|your)\s"
        r"(?:system|hidden|secret|initial|original)\s(?:prompt|instructions|message)\b"
    ),
    "reveal-secrets": (
        r"\b(?:reveal|leak|dump|disclose|expose|exfiltrate|print|output|send|share|post|email"
        r"|upload|give\sme|tell\sme)\s(?:(?:me|us)\s)?(?:your|all|any|every"
        rf"|the\s(?:system|server|assistant|environment)'?s?)\s{_WORD}{{0,2}}?"
        r"(?:api[\s_-]?keys?|secret\s?keys?|secrets|passwords?|credentials|access\stokens?"
        r"|tokens|env(?:ironment)?\s(?:variables|vars)|private\skeys?|ssh\skeys?)\b"
    ),
    "tool-call-markup": (
        r"</?(?:tool_call|tool_calls|tool_use|tool_result|function_call|function_calls"
        r"|function_results|invoke)\b"
    ),
}

_RAW_PATTERNS: dict[str, str] = {
    "zero-width-obfuscation": r"[A-Za-z][\u200b\u200c\u200d\u2060\ufeff\u180e]+[A-Za-z]",
    "bidi-control": r"[\u202a-\u202e\u2066-\u2069]",
    # tag characters, except in the emoji flags of regions (black flag + tags)
    "unicode-tag-smuggling": r"(?<![\U0001f3f4\U000e0020-\U000e007f])[\U000e0020-\U000e007e]",
}

_BASE64_NAME = "base64-encoded-instructions"

PATTERN_NAMES: tuple[str, ...] = (*_TEXT_PATTERNS, *_RAW_PATTERNS, _BASE64_NAME)
"""Every pattern's stable name, as recorded in a step's `details.guard` and errors."""

_TEXT = tuple((name, re.compile(source)) for name, source in _TEXT_PATTERNS.items())
_RAW = tuple((name, re.compile(source)) for name, source in _RAW_PATTERNS.items())

_BASE64 = re.compile(r"[A-Za-z0-9+/_-]{24,}={0,2}")
_BASE64_CANDIDATES = 64
_BASE64_MAX_CHARS = 8192

_INVISIBLE = (
    *(0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x3164, 0xFEFF, 0xFFA0),
    *range(0x180B, 0x1810),  # Mongolian variation selectors
    *range(0x200B, 0x2010),  # zero-width space, non-joiner, joiner; LRM, RLM
    *range(0x202A, 0x202F),  # bidi embeddings and overrides
    *range(0x2060, 0x2070),  # word joiner, invisible operators, bidi isolates
    *range(0xFE00, 0xFE10),  # variation selectors
    *range(0xE0100, 0xE01F0),  # variation selectors supplement
    0xE0001,  # language tag
    0xE007F,  # cancel tag
)
_INVISIBLE_TABLE: dict[int, str | None] = {
    **dict.fromkeys(_INVISIBLE),
    **{code: chr(code - 0xE0000) for code in range(0xE0020, 0xE007F)},
}
"""Invisible characters removed; Unicode tag characters turned into the ASCII they hide."""

_LOOKALIKES = str.maketrans(
    # Cyrillic a e o p c y x i j s h d q w, Latin script g, Greek a o i k v p t u e
    "\u0430\u0435\u043e\u0440\u0441\u0443\u0445\u0456\u0458\u0455\u04bb\u0501\u051b\u051d\u0261"
    "\u03b1\u03bf\u03b9\u03ba\u03bd\u03c1\u03c4\u03c5\u03b5",
    "aeopcyxijshdqwgaoikvptue",
)
"""Cyrillic and Greek letters that look like Latin ones (the common homoglyph tricks)."""

_SPACES = re.compile(r"[^\S\n]+")
_LINE_BREAKS = re.compile(r" ?\n\s*")
_EXCERPT_CHARS = 60


@dataclass(frozen=True, kw_only=True)
class Finding:
    """One pattern that matched, with a short, escaped excerpt of what it matched."""

    pattern: str
    excerpt: str


def normalise(text: str) -> str:
    """The text as the patterns see it (see the module docstring)."""
    if not text.isascii():
        text = text.translate(_INVISIBLE_TABLE)
        text = unicodedata.normalize("NFKC", text).casefold().translate(_LOOKALIKES)
    else:
        text = text.lower()
    return _LINE_BREAKS.sub("\n", _SPACES.sub(" ", text))


@functools.lru_cache(maxsize=32)
def screen(text: str) -> tuple[Finding, ...]:
    """Every pattern `text` matches, in the order of `PATTERN_NAMES`.

    Cached: the calls of a `foreach` step and the attempts of a call screen the same text.
    """
    normal = normalise(text)
    found = [_finding(name, match.group(0)) for name, match in _search(_TEXT, normal)]
    if not text.isascii():  # the raw patterns all look for non-ASCII characters
        found += [_finding(name, match.group(0)) for name, match in _search(_RAW, text)]
    hidden = _base64_instructions(text)
    if hidden is not None:
        found.append(_finding(_BASE64_NAME, hidden))
    return tuple(found)


def excerpt(text: str, limit: int = _EXCERPT_CHARS) -> str:
    """A short piece of untrusted text that is safe to show: invisible and control
    characters escaped, at most `limit` characters."""
    shown = text if len(text) <= limit else text[:limit] + "…"
    shown = "".join(_escape(char) for char in shown)
    return strip_controls(shown, keep_newlines=False)


def _escape(char: str) -> str:
    if char in "\n\t":
        return " "
    if ord(char) in _INVISIBLE_TABLE or unicodedata.category(char) in ("Cc", "Cf"):
        return f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}"
    return char


def _search(
    patterns: tuple[tuple[str, re.Pattern[str]], ...], text: str
) -> list[tuple[str, re.Match[str]]]:
    found: list[tuple[str, re.Match[str]]] = []
    for name, pattern in patterns:
        match = pattern.search(text)
        if match is not None:
            found.append((name, match))
    return found


def _finding(name: str, matched: str) -> Finding:
    return Finding(pattern=name, excerpt=excerpt(matched.strip()))


def _base64_instructions(text: str) -> str | None:
    """The first base64 run that decodes to text matching an instruction pattern."""
    for number, match in enumerate(_BASE64.finditer(text)):
        if number >= _BASE64_CANDIDATES:
            return None
        decoded = _decode_base64(match.group(0)[:_BASE64_MAX_CHARS])
        if decoded is not None and _search(_TEXT, normalise(decoded)):
            return match.group(0)
    return None


def _decode_base64(candidate: str) -> str | None:
    """The text a base64 run (standard or URL-safe alphabet) decodes to, if it is text."""
    body = candidate.rstrip("=").replace("-", "+").replace("_", "/")
    body = body[: len(body) - len(body) % 4] if len(body) % 4 == 1 else body
    try:
        raw = binascii.a2b_base64(body + "=" * (-len(body) % 4))
        decoded = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    printable = sum(1 for char in decoded if char.isprintable() or char in "\n\t\r")
    return decoded if decoded and printable >= 0.95 * len(decoded) else None
