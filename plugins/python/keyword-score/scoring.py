"""Keyword scoring for the keyword-score plugin.

Pure Python, no generated bindings: this module runs unchanged under CPython
(``python3 -m unittest``) and inside the component.

Semantics:

* ``keywords`` is a comma-separated list of ``word:score`` pairs, e.g.
  ``"viagra:5,lottery:4,winner:3,urgent:1"``. Words are matched case-insensitively
  as whole words (``"winner"`` does not match ``"winners"``); a keyword may contain
  spaces to match a literal phrase. Scores are integers and may be negative.
* Each keyword counts at most once per message, wherever it appears (Subject or
  body) and however often: repeating a word does not raise the score.
* The body arrives in chunks; :class:`KeywordScanner` finds keywords that straddle
  chunk boundaries and keeps only a short tail between chunks.
"""

from __future__ import annotations

import re
from email.header import decode_header, make_header
from typing import Dict, Iterable, List, Optional, Set, Tuple

DEFAULT_KEYWORDS = "viagra:5,lottery:4,winner:3,urgent:1"
DEFAULT_THRESHOLD = 5


def parse_keywords(spec: str) -> Tuple[Dict[str, int], List[str]]:
    """Parses ``word:score,word:score`` into ``({word: score}, [bad entries])``.

    Words are lower-cased. Empty entries are ignored; entries without a colon, with an
    empty word or a non-integer score are returned in the second list so the caller
    can log them. A word listed twice keeps its last score.
    """
    keywords: Dict[str, int] = {}
    bad: List[str] = []
    for entry in spec.split(","):
        entry = entry.strip()
        if not entry:
            continue
        word, sep, score = entry.rpartition(":")
        word = " ".join(word.split()).lower()
        try:
            value = int(score.strip())
        except ValueError:
            value = None
        if not sep or not word or value is None:
            bad.append(entry)
            continue
        keywords[word] = value
    return keywords, bad


def parse_bool(text: Optional[str], default: bool) -> bool:
    """``true``/``false`` (TOML booleans) plus ``yes``/``no``/``on``/``off``/``1``/``0``."""
    if text is None:
        return default
    value = text.strip().strip('"').lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_int(text: Optional[str], default: int) -> int:
    """An integer setting (TOML integers arrive as their text, strings may be quoted)."""
    if text is None:
        return default
    return int(text.strip().strip('"'))


def decode_subject(value: str) -> str:
    """Unfolds a raw header value and decodes RFC 2047 encoded words (``=?UTF-8?B?...?=``).

    Undecodable input is returned unfolded but otherwise as is.
    """
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", value)
    try:
        return str(make_header(decode_header(unfolded)))
    except (LookupError, UnicodeError, ValueError):
        return unfolded


def _pattern(words: Iterable[str]) -> Optional["re.Pattern[str]"]:
    # Longest first, so that of two keywords sharing a prefix the longer one wins.
    ordered = sorted(words, key=len, reverse=True)
    if not ordered:
        return None
    alternatives = "|".join(re.escape(word) for word in ordered)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


class KeywordScanner:
    """Collects which keywords occur in a message.

    Use :meth:`scan` for complete texts (the Subject) and :meth:`feed` for streamed text
    (body chunks), then :meth:`finish` once the stream has ended.
    """

    def __init__(self, keywords: Dict[str, int]):
        self.keywords = dict(keywords)
        self.found: Set[str] = set()
        self._pattern = _pattern(self.keywords)
        self._longest = max((len(word) for word in self.keywords), default=0)
        self._tail = ""  # end of the previous chunk(s) a match may still start in
        self._start = 0  # where searching `_tail + chunk` starts (1 = skip context char)

    def _collect(self, text: str, start: int, final: bool) -> None:
        if self._pattern is None:
            return
        for match in self._pattern.finditer(text, start):
            # A match touching the end of a chunk is not decided yet: the next chunk may
            # continue the word ("viagra" + "s"). It stays in the tail and is seen again.
            if not final and match.end() == len(text):
                continue
            word = match.group(0).lower()
            if word in self.keywords:
                self.found.add(word)

    def scan(self, text: str) -> None:
        """Scans a complete text."""
        self._collect(text, 0, final=True)

    def feed(self, text: str) -> None:
        """Scans the next piece of a stream."""
        if self._pattern is None:
            return
        buffer = self._tail + text
        self._collect(buffer, self._start, final=False)
        # Keep enough to hold any keyword that starts in this buffer and is not decided,
        # plus one character of context in front of it for the word-boundary check.
        if len(buffer) > self._longest:
            self._tail = buffer[-(self._longest + 1):]
            self._start = 1
        else:
            self._tail = buffer

    def finish(self) -> None:
        """Ends the stream: decides keywords at its very end."""
        self._collect(self._tail, self._start, final=True)
        self._tail = ""
        self._start = 0

    @property
    def score(self) -> int:
        return sum(self.keywords[word] for word in self.found)

    def hits(self) -> List[str]:
        """The keywords found, as sorted ``word:score`` strings (for log lines)."""
        return [f"{word}:{self.keywords[word]}" for word in sorted(self.found)]


def score_text(text: str, keywords: Dict[str, int]) -> int:
    """The score of one complete text."""
    scanner = KeywordScanner(keywords)
    scanner.scan(text)
    return scanner.score
