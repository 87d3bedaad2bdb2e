"""keyword-score: a wasmail milter-filter plugin written in Python.

Scores the Subject and the body against a keyword list from the plugin's settings,
adds ``X-Keyword-Score: <score>`` at end of message and rejects the message with
``550 5.7.1`` when the score reaches the threshold.

Grants it needs: ``log``, ``config``.

The host creates a fresh instance of the component for every SMTP transaction, so the
transaction's state lives in a module global and is simply dropped with the instance.
componentize-py runs this module's top level at *build* time and snapshots the result:
nothing here may call a capability at import time, so settings are read lazily, on the
first call that needs them.
"""

from __future__ import annotations

import codecs

# componentize-py snapshots the interpreter after importing this module at build time, and
# the component has no file system at run time: a module first imported at run time fails.
# The codecs behind the charsets that RFC 2047-encoded Subjects commonly use must therefore
# be imported here (a Subject in any other charset is scored undecoded).
import encodings.ascii  # noqa: F401
import encodings.cp1251  # noqa: F401
import encodings.cp1252  # noqa: F401
import encodings.iso8859_2  # noqa: F401
import encodings.iso8859_15  # noqa: F401
import encodings.koi8_r  # noqa: F401
import encodings.latin_1  # noqa: F401
import encodings.raw_unicode_escape  # noqa: F401  (used by email.header itself)
import encodings.utf_8  # noqa: F401
import encodings.utf_16  # noqa: F401
from typing import List, Optional

from wit_world import exports
from wit_world.imports import config, log
from wit_world.imports.milter_types import (
    BodyMode_Chunks,
    Description,
    Edit,
    Edit_AddHeader,
    Envelope,
    Outcome,
    Reply,
    Stage,
    Verdict,
    Verdict_Continue,
    Verdict_Reject,
)
from wit_world.imports.types import Header, Level

import scoring

# Run the Subject decoder once at build time so that whatever else it imports lazily is
# in the snapshot too (base64 and quoted-printable words, several charsets).
for _sample in ("=?UTF-8?B?V2lubmVy?=", "=?iso-8859-1?q?gl=FCck?= =?windows-1252?Q?=80?="):
    scoring.decode_subject(_sample)
del _sample

NAME = "keyword-score"
VERSION = "0.1.0"
SCORE_HEADER = "X-Keyword-Score"


class Settings:
    """The plugin's settings, read through the `config` capability."""

    def __init__(self) -> None:
        spec = config.get("keywords")
        self.keywords, bad = scoring.parse_keywords(
            scoring.DEFAULT_KEYWORDS if spec is None else spec
        )
        for entry in bad:
            log.write(Level.WARN, f"ignoring malformed keyword entry {entry!r} (want word:score)")
        self.threshold = self._setting("threshold", scoring.parse_int, scoring.DEFAULT_THRESHOLD)
        self.reject = self._setting("reject", scoring.parse_bool, True)

    @staticmethod
    def _setting(key, parse, default):
        try:
            return parse(config.get(key), default)
        except ValueError:
            log.write(Level.WARN, f"invalid setting {key}; using the default {default!r}")
            return default


class Transaction:
    """What the plugin knows about the current message."""

    def __init__(self) -> None:
        self.settings = Settings()
        self.scanner = scoring.KeywordScanner(self.settings.keywords)
        # Chunks may split a UTF-8 sequence; bytes that are not UTF-8 become U+FFFD.
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.sender = ""

    def end(self) -> int:
        self.scanner.feed(self.decoder.decode(b"", final=True))
        self.scanner.finish()
        return self.scanner.score


# One instance per SMTP transaction: this global is the transaction's state.
_transaction: Optional[Transaction] = None


def transaction() -> Transaction:
    global _transaction
    if _transaction is None:
        _transaction = Transaction()
    return _transaction


CONTINUE = Verdict_Continue()


class Filter(exports.Filter):
    def describe(self) -> Description:
        return Description(
            name=NAME,
            version=VERSION,
            stages=[Stage.MAIL_FROM, Stage.HEADERS, Stage.BODY, Stage.END_OF_MESSAGE],
            body=BodyMode_Chunks(),
        )

    def on_connect(self, client) -> Verdict:
        return CONTINUE

    def on_helo(self, name: str) -> Verdict:
        return CONTINUE

    def on_mail_from(self, sender: Envelope) -> Verdict:
        transaction().sender = sender.address
        return CONTINUE

    def on_rcpt(self, recipient: Envelope) -> Verdict:
        return CONTINUE

    def on_headers(self, headers: List[Header]) -> Verdict:
        tx = transaction()
        for header in headers:
            if header.name.lower() == "subject":
                tx.scanner.scan(scoring.decode_subject(header.value))
        return CONTINUE

    def on_end_of_headers(self) -> Verdict:
        return CONTINUE

    def on_body_chunk(self, chunk: bytes, truncated: bool) -> Verdict:
        tx = transaction()
        tx.scanner.feed(tx.decoder.decode(chunk))
        return CONTINUE

    def on_end_of_message(self) -> Outcome:
        tx = transaction()
        score = tx.end()
        threshold = tx.settings.threshold
        rejecting = tx.settings.reject and score >= threshold
        hits = ",".join(tx.scanner.hits()) or "-"
        log.write(
            Level.INFO,
            f"score={score} threshold={threshold} hits={hits} sender={tx.sender or '-'}"
            f" action={'reject' if rejecting else 'header'}",
        )
        edits: List[Edit] = [Edit_AddHeader(Header(name=SCORE_HEADER, value=str(score)))]
        if rejecting:
            reply = Reply(
                code=550,
                enhanced="5.7.1",
                text=f"Message looks like spam (score {score})",
            )
            return Outcome(verdict=Verdict_Reject(reply), edits=edits)
        return Outcome(verdict=CONTINUE, edits=edits)

    def on_abort(self) -> None:
        global _transaction
        _transaction = None
