"""Hugging Face Hub repository ids, checked by one rule everywhere (source lookup, model cards, push)."""

from __future__ import annotations

import re

from bitconv.errors import OptionError

# each part 1-96 of letters, digits, '-', '_', '.', not starting or ending with '-' or '.', no '--' or '..'
_PART = r"[A-Za-z0-9_](?:[\w.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"^(?:{_PART}/)?{_PART}$", re.ASCII)


def is_repo_id(text: str, *, namespaced: bool = False) -> bool:
    """True for `name` or `namespace/name` (only the latter when `namespaced`), as the Hub accepts them."""
    if not _REPO_ID.match(text) or "--" in text or ".." in text:
        return False
    return "/" in text or not namespaced


def check_repo_id(repo_id: str) -> None:
    """A repository to create or push to: NAMESPACE/NAME."""
    if not is_repo_id(repo_id, namespaced=True):
        raise OptionError(
            f"malformed repo id {repo_id!r}: write NAMESPACE/NAME, e.g. my-user/gpt2-1.58 "
            "(letters, digits, '-', '_', '.'; at most 96 characters each; no '--' or '..')"
        )
