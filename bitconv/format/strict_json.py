"""JSON as formats/SPEC.md "Validation" reads it, for every JSON a bitconv file carries (safetensors headers,
`bitconv.tensors`, the shard index, config.json): exactly one value; no object repeats a key (the standard leaves
the meaning of a repeat open, and Python keeps the last while other readers keep the first); no string holds
U+0000 or an unpaired surrogate; no key holds a control character (U+0000-U+001F, U+007F); no NaN or Infinity
(not JSON); nesting at most 64 deep. The C reader in formats/reader_c applies the same rules, so both refuse the
same files.
"""

from __future__ import annotations

import json
import re

MAX_DEPTH = 64  # formats/reader_c's MAX_JSON_DEPTH: the outermost value is at depth 0
MAX_INT_DIGITS = 4000  # below Python's int-from-text limit; any longer number is far beyond every size rule

_BAD_IN_STRING = re.compile("[\x00\ud800-\udfff]")
_BAD_IN_KEY = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


class StrictJSONError(ValueError):
    """The text breaks one of the rules above; the message says which (without the file: the caller adds it)."""


class HugeNumber:
    """A number too long to convert: it fails every integer check, and is otherwise ignored like any number."""

    def __repr__(self) -> str:
        return "<huge number>"


def _parse_int(text: str) -> int | HugeNumber:
    return int(text) if len(text) <= MAX_INT_DIGITS else HugeNumber()


def _refuse_constant(name: str):
    raise StrictJSONError(f"{name} is not JSON")


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise StrictJSONError(f"duplicate key {key[:200]!r}")
        if _BAD_IN_KEY.search(key):
            raise StrictJSONError(f"control character or unpaired surrogate in the key {key[:200]!r}")
        out[key] = value
    return out


def _check_values(value, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise StrictJSONError(f"nested more than {MAX_DEPTH} deep")
    if isinstance(value, str):
        if _BAD_IN_STRING.search(value):
            raise StrictJSONError("\\u0000 or an unpaired surrogate in a string")
    elif isinstance(value, dict):
        for item in value.values():
            _check_values(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_values(item, depth + 1)


def loads(text: str | bytes):
    """Parse `text` (bytes must be UTF-8) by the rules above; raises StrictJSONError."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StrictJSONError(f"not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_unique_pairs, parse_constant=_refuse_constant,
                           parse_int=_parse_int)
    except StrictJSONError:
        raise
    except RecursionError:
        raise StrictJSONError(f"nested more than {MAX_DEPTH} deep") from None
    except json.JSONDecodeError as exc:
        raise StrictJSONError(f"malformed JSON: {exc.msg} at character {exc.pos}") from None
    except ValueError as exc:
        raise StrictJSONError(f"malformed JSON: {exc}") from None
    _check_values(value, 0)
    return value


def is_int(value) -> bool:
    """A JSON integer: not a float (1.0, 1e2), not true/false."""
    return type(value) is int


def is_size(value) -> bool:
    """An integer from 0 to 2^63 - 1, the range every size and offset in a bitconv file must lie in."""
    return type(value) is int and 0 <= value <= 2**63 - 1
