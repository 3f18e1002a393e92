"""Hugging Face Hub repository ids, checked by one rule everywhere (source lookup, model cards, push)."""

from __future__ import annotations

import re

from bitconv.errors import OptionError

# each part 1-96 of letters, digits, '-', '_', '.', not starting or ending with '-' or '.', no '--' or '..'
_PART = r"[A-Za-z0-9_](?:[\w.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"^(?:{_PART}/)?{_PART}$", re.ASCII)


def is_repo_id(text: str, *, namespaced: bool = False) -> bool:
    """True for `name` or `namespace/name` (only the latter when `namespaced`), as the Hub accepts them."""
    if not _REPO_ID.fullmatch(text) or "--" in text or ".." in text:
        return False
    return "/" in text or not namespaced


# a branch name as git and the Hub accept it: letters, digits, '.', '_', '-', '/' between parts
_REVISION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}$", re.ASCII)


def check_revision(revision: str) -> None:
    """A branch to commit to (git's ref name rules, which the Hub applies)."""
    bad = (not _REVISION.fullmatch(revision) or ".." in revision or "//" in revision or revision.endswith(("/", ".", ".lock"))
           or any(part.startswith(".") for part in revision.split("/")))
    if bad:
        raise OptionError(
            f"malformed --revision {revision!r}: give a branch name such as main or experiments/v2 (letters, digits, "
            "'.', '_', '-', '/'; no '..', '//', leading '.' in a part, or trailing '/', '.' or '.lock')"
        )


def check_repo_id(repo_id: str) -> None:
    """A repository to create or push to: NAMESPACE/NAME."""
    if not is_repo_id(repo_id, namespaced=True):
        raise OptionError(
            f"malformed repo id {repo_id!r}: write NAMESPACE/NAME, e.g. my-user/gpt2-1.58 "
            "(letters, digits, '-', '_', '.'; at most 96 characters each; no '--' or '..')"
        )
