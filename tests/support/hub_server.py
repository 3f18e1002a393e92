"""A small stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, for testing `bitconv push`.

It implements the endpoints that huggingface_hub 2.x's `create_repo`, `create_branch` and `create_commit`
call when large files take the LFS path (Xet disabled; see docs/hub.md), as read from the installed
package's source (hf_api.py, _commit_api.py, lfs.py):

    POST /api/repos/create                                   create_repo
    GET  /api/models/{repo}[/revision/{rev}]                 repo_info (create_repo(exist_ok) after 401/403, empty commits)
    POST /api/models/{repo}/branch/{branch}                  create_branch
    POST /api/validate-yaml                                  create_commit checks README.md front matter
    POST /api/models/{repo}/preupload/{rev}                  upload mode per file: "regular" or "lfs"
    POST /{repo}.git/info/lfs/objects/batch                  LFS batch API: where to PUT each object
    PUT  /lfs/upload/{oid}                                   basic transfer: the whole object
    PUT  /lfs/part/{oid}/{n}                                 multipart transfer: one part (answers an ETag)
    POST /lfs/complete/{oid}                                 multipart completion
    POST /{repo}.git/info/lfs/objects/verify                 LFS verify
    POST /api/models/{repo}/commit/{rev}                     the commit, NDJSON: header, file (base64), lfsFile

Everything is kept in memory: repos, branches, commits with their full file trees, LFS blobs (checked
against their sha256 on arrival). `HubState.fail` injects failures: a dropped connection in the middle of
an LFS upload or before the commit answers. Every request is recorded in `HubState.requests`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".onnx", ".pt", ".pth", ".npy", ".h5", ".msgpack", ".ot", ".model")
REGULAR_MAX_BYTES = 10 * 1024 * 1024  # the Hub sends bigger files through LFS whatever their name
TEST_TOKEN = "hf_test_write_token"  # the token of user "test-user"
INITIAL_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.gguf filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    summary: str
    description: str
    files: dict[str, bytes]  # the whole tree after this commit
    lfs_paths: set[str]


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> head commit oid
    commits: dict[str, Commit] = field(default_factory=dict)


@dataclass
class HubState:
    tokens: dict[str, str] = field(default_factory=lambda: {TEST_TOKEN: "test-user"})
    repos: dict[str, Repo] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)  # LFS store: sha256 hex -> content
    parts: dict[tuple[str, int], bytes] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    unhandled: list[tuple[str, str]] = field(default_factory=list)  # requests for endpoints not implemented here
    # failure injection: {"drop_lfs_upload": n} drops the next n LFS uploads half-way through their body,
    # {"drop_commit": n} drops the next n commit requests after reading them, before answering,
    # {"echo_headers": n} answers the next n requests with a 500 whose body repeats the request's headers (a
    # misconfigured proxy), token included
    fail: dict[str, int] = field(default_factory=dict)
    multipart_threshold: int = 1 << 62  # objects at least this big are asked for in parts
    multipart_chunk: int = 5 * 1024 * 1024
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_failure(self, kind: str) -> bool:
        with self.lock:
            if self.fail.get(kind, 0) > 0:
                self.fail[kind] -= 1
                return True
            return False

    def head_files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.branches[branch]].files

    def commits_on(self, repo_id: str, branch: str = "main") -> list[Commit]:
        repo = self.repos[repo_id]
        out, oid = [], repo.branches.get(branch)
        while oid:
            out.append(repo.commits[oid])
            oid = repo.commits[oid].parent
        return out

    def new_commit(self, repo: Repo, parent: str | None, summary: str, description: str,
                   files: dict[str, bytes], lfs_paths: set[str]) -> Commit:
        digest = hashlib.sha1(json.dumps([repo.repo_id, parent, summary, len(repo.commits)]).encode())
        for path in sorted(files):
            digest.update(path.encode() + hashlib.sha256(files[path]).digest())
        commit = Commit(digest.hexdigest(), parent, summary, description, files, lfs_paths)
        repo.commits[commit.oid] = commit
        return commit


class _Dropped(Exception):
    """Raised inside a handler to hang up without an answer (the client sees a dropped connection)."""


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "HubServer"

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    # ---- plumbing

    @property
    def state(self) -> HubState:
        return self.server.state

    @property
    def base(self) -> str:
        return f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"

    def read_body(self, stop_after: int | None = None) -> bytes:
        """The request body, Content-Length or chunked (httpx streams file objects chunked)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
                if stop_after is not None and sum(map(len, chunks)) >= stop_after:
                    return b"".join(chunks)
        n = int(self.headers.get("Content-Length", 0))
        return self.rfile.read(n if stop_after is None else min(n, stop_after))

    def send(self, status: int, body: dict | list | bytes | None = None, headers: dict[str, str] | None = None) -> None:
        raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if not isinstance(body, bytes) and body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def hang_up(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise _Dropped

    def user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return self.state.tokens.get(auth[len("Bearer "):]) if auth.startswith("Bearer ") else None

    def require_user(self) -> str:
        user = self.user()
        if user is None:
            # the Hub's answer to a missing or unknown token
            self.send(401, {"error": "Invalid credentials in Authorization header"},
                      {"X-Error-Message": "Invalid credentials in Authorization header"})
            raise _Dropped
        return user

    def repo_or_404(self, repo_id: str) -> Repo:
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and self.user() != repo_id.split("/")[0]):
            self.send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            raise _Dropped
        return repo

    def writable_repo(self, repo_id: str) -> Repo:
        user = self.require_user()
        repo = self.repo_or_404(repo_id)
        if repo_id.split("/")[0] != user:
            self.send(403, {"error": f"You don't have the rights to write to {repo_id}"})
            raise _Dropped
        return repo

    def branch_head(self, repo: Repo, revision: str) -> str:
        if revision not in repo.branches:
            self.send(404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"})
            raise _Dropped
        return repo.branches[revision]

    # ---- dispatch

    ROUTES = [
        ("POST", r"/api/repos/create", "create_repo"),
        ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
        ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/branch/(?P<branch>[^/]+)", "create_branch"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", r"/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/lfs/upload/(?P<oid>[0-9a-f]{64})", "lfs_upload"),
        ("PUT", r"/lfs/part/(?P<oid>[0-9a-f]{64})/(?P<n>\d+)", "lfs_part"),
        ("POST", r"/lfs/complete/(?P<oid>[0-9a-f]{64})", "lfs_complete"),
        ("POST", r"/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/verify", "lfs_verify"),
        ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)", "commit"),
    ]

    def route(self, method: str) -> None:
        path = urlparse(self.path).path
        self.state.requests.append((method, path))
        if self.state.take_failure("echo_headers"):
            self.read_body()
            headers = "; ".join(f"{k}: {v}" for k, v in self.headers.items())
            self.send(500, {"error": f"internal error handling {method} {path} with headers {headers}"})
            return
        for m, pattern, name in self.ROUTES:
            match = re.fullmatch(pattern, path)
            if m == method and match:
                args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                try:
                    getattr(self, name)(**args)
                except _Dropped:
                    pass
                return
        self.state.unhandled.append((method, path))
        self.read_body()
        self.send(404, {"error": f"not implemented by the test Hub: {method} {path}"})

    def do_GET(self):  # noqa: N802 - http.server API
        self.route("GET")

    def do_POST(self):  # noqa: N802
        self.route("POST")

    def do_PUT(self):  # noqa: N802
        self.route("PUT")

    # ---- endpoints

    def create_repo(self) -> None:
        payload = json.loads(self.read_body())
        user = self.require_user()
        namespace = payload.get("organization") or user
        repo_id = f"{namespace}/{payload['name']}"
        if payload.get("type") not in (None, "model"):
            return self.send(400, {"error": "only model repos in the test Hub"})
        if namespace != user:
            return self.send(403, {"error": f"You don't have the rights to create a model under the namespace {namespace}"})
        if repo_id in self.state.repos:
            return self.send(409, {"error": "You already created this model repo", "url": f"{self.base}/{repo_id}"})
        repo = Repo(repo_id, private=payload.get("visibility") == "private")
        first = self.state.new_commit(repo, None, "initial commit", "", {".gitattributes": INITIAL_GITATTRIBUTES}, set())
        repo.branches["main"] = first.oid
        self.state.repos[repo_id] = repo
        self.send(200, {"url": f"{self.base}/{repo_id}", "name": repo_id, "id": repo_id})

    def repo_info(self, repo: str, rev: str = "main") -> None:
        r = self.repo_or_404(repo)
        oid = self.branch_head(r, rev)
        files = r.commits[oid].files
        self.send(200, {"id": repo, "modelId": repo, "sha": oid, "private": r.private,
                        "siblings": [{"rfilename": p} for p in sorted(files)]})

    def create_branch(self, repo: str, branch: str) -> None:
        payload = json.loads(self.read_body() or b"{}")
        r = self.writable_repo(repo)
        if branch in r.branches:
            return self.send(409, {"error": "Reference already exists"})
        start = payload.get("startingPoint") or "main"
        r.branches[branch] = self.branch_head(r, start)
        self.send(200, {})

    def validate_yaml(self) -> None:
        payload = json.loads(self.read_body())
        content = payload.get("content", "")
        match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        if not match:
            return self.send(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]})
        try:
            meta = yaml.safe_load(match.group(1))
        except yaml.YAMLError as exc:
            return self.send(400, {"errors": [{"message": f"YAML: {exc}"}]})
        errors = []
        if not isinstance(meta, dict):
            errors.append({"message": "metadata must be a mapping"})
        else:
            for key in ("tags", "base_model"):
                if key in meta and not isinstance(meta[key], (str, list)):
                    errors.append({"message": f'"{key}" must be a string or a list of strings'})
            if "tags" in meta and isinstance(meta["tags"], list) and not all(isinstance(t, str) for t in meta["tags"]):
                errors.append({"message": '"tags" must be a list of strings'})
        self.send(400 if errors else 200, {"errors": errors, "warnings": []})

    def preupload(self, repo: str, rev: str) -> None:
        payload = json.loads(self.read_body())
        r = self.writable_repo(repo)
        head = r.commits[self.branch_head(r, rev)]
        out = []
        for f in payload["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] > REGULAR_MAX_BYTES or b"\0" in sample
            existing = head.files.get(f["path"])
            oid = None
            if existing is not None:
                oid = hashlib.sha256(existing).hexdigest() if f["path"] in head.lfs_paths else git_blob_sha1(existing)
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self.send(200, {"files": out, "commitOid": head.oid})

    def lfs_batch(self, repo: str) -> None:
        payload = json.loads(self.read_body())
        self.writable_repo(repo)
        if payload.get("operation") != "upload" or payload.get("hash_algo", "sha256") != "sha256":
            return self.send(422, {"message": "only sha256 uploads"})
        objects = []
        for obj in payload["objects"]:
            oid, size = obj["oid"], obj["size"]
            entry = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.state.blobs:
                verify = {"href": f"{self.base}/{repo}.git/info/lfs/objects/verify"}
                if size >= self.state.multipart_threshold:
                    chunk = self.state.multipart_chunk
                    n_parts = -(-size // chunk)
                    header = {"chunk_size": str(chunk)}
                    header.update({str(i + 1): f"{self.base}/lfs/part/{oid}/{i + 1}" for i in range(n_parts)})
                    upload = {"href": f"{self.base}/lfs/complete/{oid}", "header": header}
                else:
                    upload = {"href": f"{self.base}/lfs/upload/{oid}"}
                entry["actions"] = {"upload": upload, "verify": verify}
            objects.append(entry)
        self.send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _store_blob(self, oid: str, data: bytes) -> bool:
        if hashlib.sha256(data).hexdigest() != oid:
            self.send(400, {"message": f"sha256 of the received bytes does not match {oid}"})
            return False
        with self.state.lock:
            self.state.blobs[oid] = data
        return True

    def lfs_upload(self, oid: str) -> None:
        if self.state.take_failure("drop_lfs_upload"):
            self.read_body(stop_after=max(1, int(self.headers.get("Content-Length", 2)) // 2))
            self.hang_up()
        if self._store_blob(oid, self.read_body()):
            self.send(200, b"")

    def lfs_part(self, oid: str, n: str) -> None:
        if self.state.take_failure("drop_lfs_upload"):
            self.read_body(stop_after=max(1, int(self.headers.get("Content-Length", 2)) // 2))
            self.hang_up()
        data = self.read_body()
        with self.state.lock:
            self.state.parts[(oid, int(n))] = data
        self.send(200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    def lfs_complete(self, oid: str) -> None:
        payload = json.loads(self.read_body())
        data = b""
        for part in payload["parts"]:
            chunk = self.state.parts.get((oid, part["partNumber"]))
            if chunk is None or f'"{hashlib.md5(chunk).hexdigest()}"' != part["etag"]:
                return self.send(400, {"message": f"part {part['partNumber']} of {oid} missing or etag mismatch"})
            data += chunk
        if self._store_blob(oid, data):
            self.send(200, {})

    def lfs_verify(self, repo: str) -> None:
        payload = json.loads(self.read_body())
        self.writable_repo(repo)
        blob = self.state.blobs.get(payload["oid"])
        if blob is None or len(blob) != payload["size"]:
            return self.send(404, {"message": f"object {payload['oid']} not found"})
        self.send(200, {})

    def commit(self, repo: str, rev: str) -> None:
        lines = [json.loads(line) for line in self.read_body().splitlines() if line.strip()]
        if self.state.take_failure("drop_commit"):
            self.hang_up()
        r = self.writable_repo(repo)
        parent = self.branch_head(r, rev)
        if self.headers.get("Content-Type") != "application/x-ndjson" or not lines or lines[0].get("key") != "header":
            return self.send(400, {"error": "a commit is NDJSON starting with a header line"})
        header = lines[0]["value"]
        if header.get("parentCommit") and header["parentCommit"] != parent:
            return self.send(412, {"error": "A commit has happened since. Please refresh and try again."})
        files = dict(r.commits[parent].files)
        lfs_paths = set(r.commits[parent].lfs_paths)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if key == "file":
                if value.get("encoding") != "base64":
                    return self.send(400, {"error": f"{path}: only base64 file content"})
                files[path] = base64.b64decode(value["content"])
                lfs_paths.discard(path)
            elif key == "lfsFile":
                blob = self.state.blobs.get(value["oid"])
                if blob is None or ("size" in value and len(blob) != value["size"]):
                    return self.send(422, {"error": f"{path}: LFS object {value['oid']} was never uploaded"})
                files[path] = blob
                lfs_paths.add(path)
            elif key == "deletedFile":
                files.pop(path, None)
                lfs_paths.discard(path)
            else:
                return self.send(400, {"error": f"unsupported commit operation {key}"})
        commit = self.state.new_commit(r, parent, header["summary"], header.get("description", ""), files, lfs_paths)
        r.branches[rev] = commit.oid
        self.send(200, {"success": True, "commitOid": commit.oid, "commitUrl": f"{self.base}/{repo}/commit/{commit.oid}",
                        "pullRequestUrl": None})


class HubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: HubState | None = None):
        super().__init__(("127.0.0.1", 0), HubHandler)  # port 0: the OS picks a free one
        self.state = state or HubState()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=5)
