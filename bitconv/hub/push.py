"""Publishing a converted folder to the Hugging Face Hub: `bitconv push`.

Built on huggingface_hub's API: `create_repo(exist_ok=True)`, `create_branch` for a revision other than
main, then one `create_commit` holding every file of the folder plus the generated model card as README.md
(passed as bytes, so the user's folder is never written to). Token: the `token` argument, else HF_TOKEN or
the saved login (`hf auth login`); endpoint: the `endpoint` argument, else HF_ENDPOINT, else the Hub.

Large files go through the Git LFS batch protocol (basic and multipart transfers), not Xet: that is the
upload path our tests exercise against tests/hub_server.py (docs/hub.md says what is covered).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, quote_plus, urlsplit

from bitconv.errors import BitconvError, HubError
from bitconv.format.reader import open_bitconv_folder
from bitconv.hub.ids import check_repo_id, check_revision
from bitconv.report.model_card import build_model_card

DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass
class UploadFile:
    path_in_repo: str
    n_bytes: int
    local_path: Path | None  # None for the generated model card
    note: str = ""


@dataclass
class PushPlan:
    """What a push would upload: computed from the folder alone, without touching the network."""

    folder: Path
    repo_id: str
    revision: str
    files: list[UploadFile]
    card: str
    report: Path | None
    commit_message: str
    commit_description: str

    @property
    def n_bytes(self) -> int:
        return sum(f.n_bytes for f in self.files)


@dataclass
class PushResult:
    plan: PushPlan
    pushed: bool
    endpoint: str = ""
    repo_url: str = ""
    commit_url: str = ""
    commit_oid: str = ""
    skipped_unchanged: list[str] = field(default_factory=list)


def check_bitconv_folder(folder: Path) -> dict:
    """The folder's config.json, after checking the folder is a bitconv output that readers can open."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HubError(f"{folder}: not a folder; give the output folder of `bitconv convert`")
    config, _ = open_bitconv_folder(folder)  # every file check: a truncated or foreign file fails before any upload
    return config


def _folder_files(folder: Path) -> Iterator[Path]:
    """Files to upload: everything but hidden files/folders and interrupted writes (*.partial).

    Nothing outside the folder is ever uploaded: a symbolic link whose target lies outside it refuses the push (it
    is not skipped, which would upload a model without a file it needs), as does a FIFO or device, which would
    block or stream without end.
    """
    root = folder.resolve()
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or "__pycache__" in rel.parts:
            continue
        if path.is_symlink() and root not in path.resolve().parents:
            raise HubError(f"{path} is a symbolic link to {os.readlink(path)}, outside the folder; bitconv push "
                           "uploads only what is inside the folder: replace the link by a copy or remove it")
        if path.is_dir() or path.name.endswith(".partial"):
            continue
        if not path.is_file():
            raise HubError(f"{path}: not a regular file (a FIFO or a device); remove it from the folder")
        yield path


def plan_push(folder: Path | str, repo_id: str, *, revision: str = "main", report: Path | str | None = None) -> PushPlan:
    folder = Path(folder)
    check_repo_id(repo_id)
    config = check_bitconv_folder(folder)
    if report is not None and not Path(report).is_file():
        raise HubError(f"{report}: no such report file; pass the JSON written by `bitconv report --json`")
    local_files = list(_folder_files(folder))  # links out of the folder and FIFOs refused before anything is read
    card, used_report = build_model_card(folder, repo_id, Path(report) if report else None)
    files = []
    for path in local_files:
        rel = path.relative_to(folder).as_posix()
        if rel == "README.md":
            continue  # replaced by the generated card (its license was read into the card)
        files.append(UploadFile(rel, path.stat().st_size, path))
    had_readme = (folder / "README.md").is_file()
    card_bytes = card.encode()
    files.append(UploadFile("README.md", len(card_bytes), None,
                            "generated model card" + (", replaces the folder's README.md" if had_readme else "")))
    files.sort(key=lambda f: f.path_in_repo)

    qc = config["quantization_config"]
    what = f"{qc.get('bits', '?')}-bit {qc.get('granularity', '')} {qc.get('packing', '')}".replace("  ", " ").strip()
    message = f"Upload {repo_id.split('/')[-1]} ({what}) with bitconv"
    description = "\n".join(
        [f"bitconv push of {len(files)} files ({sum(f.n_bytes for f in files)} bytes).",
         f"Source: {qc.get('source', 'unknown')}; report: {used_report.name if used_report else 'none given'}."]
    )
    return PushPlan(folder, repo_id, revision, files, card, used_report, message, description)


def format_plan(plan: PushPlan) -> str:
    """Human-readable listing of a plan: files with sizes, then the model card."""
    width = max(len(f.path_in_repo) for f in plan.files)
    lines = [f"Would push {len(plan.files)} files ({plan.n_bytes} bytes) to {plan.repo_id} @ {plan.revision}",
             f"commit: {plan.commit_message}", ""]
    for f in plan.files:
        lines.append(f"  {f.path_in_repo:<{width}}  {f.n_bytes:>12} bytes" + (f"  ({f.note})" if f.note else ""))
    lines += ["", "---- README.md (model card) ----", plan.card]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# talking to the Hub


def resolve_endpoint(endpoint: str | None) -> str:
    """The Hub URL. The token goes to it in a header, so it must be https://, or http:// to this machine only
    (loopback: the token never crosses a network, which is how the tests' Hub and local mirrors run)."""
    url = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        raise HubError(f"endpoint {url!r} is not an http(s) URL; set --endpoint or HF_ENDPOINT to e.g. https://huggingface.co")
    parts = urlsplit(url)
    if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
        raise HubError(f"endpoint {url} is plain http: the token would cross the network unencrypted; use https://, "
                       "or http:// only to this machine (127.0.0.1, localhost)")
    return url


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _scrub(message: str, token: str) -> str:
    """The message without the token (a server that echoes request headers would otherwise print it)."""
    for form in {token, quote(token, safe=""), quote_plus(token)}:
        message = message.replace(form, "***")
    return message


def resolve_token(token: str | None) -> str:
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubError(
            "no Hugging Face token: set HF_TOKEN to a token with write access "
            "(https://huggingface.co/settings/tokens) or run `hf auth login`"
        )
    return token


@contextlib.contextmanager
def _lfs_upload_protocol() -> Iterator[None]:
    """Make huggingface_hub upload through Git LFS even when hf_xet is installed, for the duration of a push.

    With hf_xet present huggingface_hub would chunk files through the Xet storage service instead; bitconv
    uses the LFS protocol because that is the path it is tested on. huggingface_hub reads this flag on each
    upload (`is_xet_available()`), so setting it for the push is enough and is undone afterwards.
    """
    from huggingface_hub import constants

    previous = constants.HF_HUB_DISABLE_XET
    constants.HF_HUB_DISABLE_XET = True
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_XET = previous


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _explain(exc: BaseException, step: str, endpoint: str, repo_id: str) -> BitconvError:
    """One line that says what failed and what to do, from anything huggingface_hub/httpx raised."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RevisionNotFoundError

    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for err in chain:
        if isinstance(err, OfflineModeIsEnabled):
            return HubError("HF_HUB_OFFLINE is set, so nothing can be pushed; unset HF_HUB_OFFLINE and run the command again")
        if isinstance(err, RevisionNotFoundError):
            return HubError(f"revision not found in {repo_id} while {step}; check --revision")
        if isinstance(err, HfHubHTTPError) and err.response is not None:
            status = err.response.status_code
            if status == 401:
                return HubError(
                    f"{endpoint} rejected the token (401 Unauthorized) while {step}: create a token with write access at "
                    "https://huggingface.co/settings/tokens and set HF_TOKEN, or run `hf auth login`; nothing was pushed"
                )
            if status == 403:
                return HubError(
                    f"the token may not write to {repo_id} (403 Forbidden) while {step}: push to your own namespace "
                    "or get write access to it; nothing was pushed"
                )
            try:
                detail = err.response.json().get("error") or err.response.text
            except ValueError:
                detail = err.response.text
            return HubError(f"{endpoint} answered {status} while {step}: {_one_line(detail)}; nothing was pushed")
        if isinstance(err, httpx2.TransportError):
            try:
                url = str(err.request.url)
            except RuntimeError:
                url = endpoint
            if "/commit/" in url:
                return HubError(
                    f"the connection to {endpoint} was lost while creating the commit ({_one_line(err) or type(err).__name__}); "
                    f"it was most likely not created: check {endpoint}/{repo_id} and run the command again "
                    "(files already uploaded are not sent twice)"
                )
            return HubError(
                f"network failure talking to {endpoint} while {step} ({type(err).__name__}: {_one_line(err)}); "
                "nothing was pushed: check the connection and the endpoint (HF_ENDPOINT, --endpoint) and run the command again"
            )
    first = chain[0]
    return HubError(f"pushing to {endpoint} failed while {step}: {_one_line(f'{type(first).__name__}: {first}')}; nothing was pushed")


def push(
    folder: Path | str,
    repo_id: str,
    *,
    private: bool = False,
    revision: str = "main",
    dry_run: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    report: Path | str | None = None,
) -> PushResult:
    """Upload a bitconv output folder (plus a generated model card) to `repo_id` in one commit."""
    check_revision(revision)
    plan = plan_push(folder, repo_id, revision=revision, report=report)
    if dry_run:
        return PushResult(plan, pushed=False)
    url = resolve_endpoint(endpoint)
    token = resolve_token(token)

    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=url, token=token)
    operations = [
        CommitOperationAdd(path_in_repo=f.path_in_repo,
                           path_or_fileobj=str(f.local_path) if f.local_path else plan.card.encode())
        for f in plan.files
    ]
    step = "creating the repo"
    try:
        with _lfs_upload_protocol():
            repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision != "main":
                step = f"creating branch {revision}"
                api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
            step = "uploading the files and creating the commit"
            info = api.create_commit(
                repo_id, operations, commit_message=plan.commit_message, commit_description=plan.commit_description,
                revision=revision, repo_type="model",
            )
    except BitconvError as exc:
        raise type(exc)(_scrub(str(exc), token)) from None
    except Exception as exc:  # huggingface_hub raises HTTP, network and ValueError types; each is explained
        # not chained: the original's text may hold what the server echoed, the token included
        raise HubError(_scrub(str(_explain(exc, step, url, repo_id)), token)) from None
    unchanged = [op.path_in_repo for op in operations
                 if op._remote_oid is not None and op._remote_oid == op._local_oid]
    return PushResult(plan, pushed=True, endpoint=url, repo_url=str(repo_url), commit_url=info.commit_url,
                      commit_oid=info.oid, skipped_unchanged=unchanged)
