"""Text from users: what the database can store, and titles that read as what they are.

PostgreSQL refuses NUL in text, and no UTF-8 encoding exists for an unpaired surrogate (JSON can spell both,
as `\\u0000` and `\\ud800`): such text is refused where a request is parsed, with a clear error, rather than
failing deep in a write. A title shows in lists and tab titles, where a right-to-left override makes
"gnp.exe" read as "exe.png": titles lose their control and bidirectional-formatting characters.
"""

import re
from typing import Any

# C0 and C1 controls (tab and newline included: a title is one line) become spaces; the invisible characters
# that reorder or mark direction go: ALM, LRM, RLM, the embeddings and overrides (LRE..RLO), the isolates.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")
_BIDI_FORMATTING = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


class UnstorableText(ValueError):
    """A string in a request that the database cannot store."""


def _check(value: str) -> None:
    if "\x00" in value:
        raise UnstorableText("Text must not contain NUL characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UnstorableText("Text must not contain unpaired surrogates (invalid Unicode).") from None


def check_document(document: Any) -> None:
    """Raises UnstorableText if any string (key or value) of a parsed JSON document cannot be stored."""
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            _check(value)
        elif isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)


def may_need_check(raw: str) -> bool:
    """Whether JSON text can hold such a string: only through a `\\u` escape (a raw NUL is invalid JSON, and
    decoded UTF-8 holds no lone surrogate), so most requests skip the walk."""
    return "\\u" in raw


def clean_title(title: str) -> str:
    """A title without controls or bidirectional formatting, its whitespace collapsed."""
    return " ".join(_CONTROLS.sub(" ", _BIDI_FORMATTING.sub("", title)).split())
