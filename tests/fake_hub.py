"""A tiny in-memory stand-in for the Hugging Face Hub HTTP API, served on 127.0.0.1 for the publishing tests.

It answers only what `HfApi.upload_folder` (through `bermo-push`) and `from_pretrained` / `pipeline` call, in the
shapes huggingface_hub's client expects:

    GET  /api/whoami-v2                              the token's user (401 for a bad or missing token)
    POST /api/repos/create                           a new, empty repo (409 if it exists)
    POST /api/validate-yaml                          always valid (the card is checked by bermo itself)
    POST /api/models/{repo}/preupload/{rev}          every file "regular": sent inline, base64, in the commit
    POST /api/models/{repo}/commit/{rev}             the ndjson commit: header line, then one "file" line per file
    GET  /api/models/{repo}[/revision/{rev}]         model info: sha, private, siblings (bermo-push reads `private`)
    GET  /api/models/{repo}/tree/{rev}[/{path}]      the files of a revision
    HEAD|GET /{repo}/resolve/{rev}/{path}            a file, with X-Repo-Commit, ETag and Content-Length

Repos hold whole snapshots per commit (`Repo.commits`); every successful commit is also appended to `FakeHub.commits`
so that a test can assert that nothing was committed. Writes need `Authorization: Bearer <token>`; reads of a public
repo need no token, but a wrong one is refused (401) as the Hub does.
"""

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [  # (method, path pattern, handler name)
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("POST", rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ("GET", rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?", "model_info"),
    ("GET", rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
    ("HEAD", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("GET", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]
EMPTY_COMMIT = "0" * 40


def git_blob_id(content):
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    private: bool = False
    head: str = EMPTY_COMMIT  # the commit "main" points to
    commits: dict = field(default_factory=lambda: {EMPTY_COMMIT: {}})  # commit id -> {path: bytes}

    def files(self, revision="main"):
        """The snapshot at REVISION ("main" or a commit id), or None for an unknown revision."""
        return self.commits.get(self.head if revision == "main" else revision)

    def commit_id(self, revision):
        return self.head if revision == "main" else revision


class HubError(Exception):
    def __init__(self, status, message, code=None, commit=None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


class FakeHub:
    """`with FakeHub(token=...) as hub:` serves on `hub.url` until the block ends."""

    def __init__(self, token, user="user"):
        self.token, self.user = token, user
        self.repos = {}  # repo id -> Repo
        self.commits = []  # (repo id, commit id, summary, paths) of every commit made
        self.requests = []  # (method, path) of every request received
        self.lock = threading.Lock()
        self.server = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def files(self, repo_id, revision="main"):
        return self.repos[repo_id].files(revision)

    def __enter__(self):
        handler = type("Handler", (_Handler,), {"hub": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    # ----------------------------------------------------------------------------------------------------------------
    # The API. Each handler gets (authenticated user or None, route groups, parsed JSON or raw body) and returns
    # (status, headers, body: bytes | JSON-able).

    def whoami(self, user, **_):
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return 200, {}, {"type": "user", "name": user, "fullname": user, "orgs": [], "auth": {"type": "access_token"}}

    def create_repo(self, user, body, **_):
        self.need_writer(user)
        repo_id = f"{body.get('organization') or user}/{body['name']}"
        answer = {"url": f"{self.url}/{repo_id}", "name": repo_id}
        if repo_id in self.repos:  # create_repo(exist_ok=True) reads the url from the 409 answer
            return 409, {"X-Error-Message": "You already created this model repo"}, {
                "error": "You already created this model repo", **answer}
        self.repos[repo_id] = Repo(private=body.get("visibility") == "private")
        return 200, {}, answer

    def validate_yaml(self, user, **_):
        return 200, {}, {"errors": [], "warnings": []}

    def preupload(self, user, repo, rev, body, **_):
        self.need_writer(user)
        self.snapshot(user, repo, rev)
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in body["files"]]
        return 200, {}, {"files": files}

    def commit(self, user, repo, rev, body, **_):
        self.need_writer(user)
        if unquote(rev) != "main":
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        parent = self.snapshot(user, repo, rev)
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise HubError(400, "commit payload must start with a header line")
        files, paths = dict(parent), []
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file" and value.get("encoding") == "base64":
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "deletedFile":
                files.pop(value["path"], None)
            else:  # lfsFile (never asked for: every preupload answer is "regular"), deletedFolder, copies
                raise HubError(400, f"unsupported commit operation {line['key']!r}")
            paths.append(value["path"])
        repo_state = self.repos[repo]
        digest = hashlib.sha1(repo_state.head.encode() + json.dumps(lines, sort_keys=True).encode())
        commit_id = digest.hexdigest()
        repo_state.commits[commit_id] = files
        repo_state.head = commit_id
        self.commits.append((repo, commit_id, lines[0]["value"]["summary"], paths))
        return 200, {}, {"commitUrl": f"{self.url}/{repo}/commit/{commit_id}", "commitOid": commit_id,
                         "success": True}

    def model_info(self, user, repo, rev=None, **_):
        files = self.snapshot(user, repo, rev or "main")
        siblings = [{"rfilename": path, "size": len(content), "blobId": git_blob_id(content)}
                    for path, content in sorted(files.items())]
        return 200, {}, {"id": repo, "modelId": repo, "sha": self.repos[repo].commit_id(unquote(rev or "main")),
                         "private": self.repos[repo].private, "siblings": siblings, "tags": [], "downloads": 0,
                         "likes": 0}

    def tree(self, user, repo, rev, path=None, **_):
        files = self.snapshot(user, repo, rev)
        prefix = f"{path.strip('/')}/" if path else ""
        entries = [{"type": "file", "path": name, "size": len(content), "oid": git_blob_id(content)}
                   for name, content in sorted(files.items()) if name.startswith(prefix)]
        return 200, {}, entries

    def resolve(self, user, repo, rev, path, **_):
        files = self.snapshot(user, repo, rev)
        commit_id = self.repos[repo].commit_id(unquote(rev))
        path = unquote(path)
        if path not in files:
            raise HubError(404, "Entry not found", "EntryNotFound", commit=commit_id)
        content = files[path]
        headers = {"X-Repo-Commit": commit_id, "ETag": f'"{git_blob_id(content)}"',
                   "Content-Type": "application/octet-stream"}
        return 200, headers, content

    # ----------------------------------------------------------------------------------------------------------------

    def need_writer(self, user):
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")

    def snapshot(self, user, repo, rev):
        state = self.repos.get(repo)
        if state is None or (state.private and user is None):
            raise HubError(404, "Repository not found", "RepoNotFound")
        files = state.files(unquote(rev))
        if files is None:
            raise HubError(404, f"Invalid rev id: {unquote(rev)}", "RevisionNotFound")
        return files

    def handle(self, method, path, authorization, raw_body):
        """Route one request; return (status, headers, body bytes)."""
        with self.lock:
            self.requests.append((method, path))
            try:
                token = authorization[len("Bearer "):] if authorization.startswith("Bearer ") else None
                if authorization and token != self.token:
                    raise HubError(401, "Invalid credentials in Authorization header")
                user = self.user if token else None
                for route_method, pattern, name in ROUTES:
                    match = re.fullmatch(pattern, path)
                    if route_method == method and match:
                        groups = {key: value for key, value in match.groupdict().items() if value is not None}
                        is_json = name not in ("commit", "resolve") and raw_body
                        body = json.loads(raw_body) if is_json else raw_body
                        status, headers, payload = getattr(self, name)(user=user, body=body, method=method, **groups)
                        break
                else:
                    raise HubError(404, f"fake hub: no route for {method} {path}")
            except HubError as error:
                status, payload = error.status, {"error": error.message}
                headers = {"X-Error-Message": error.message}
                if error.code:
                    headers["X-Error-Code"] = error.code
                if error.commit:
                    headers["X-Repo-Commit"] = error.commit
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
            headers.setdefault("Content-Type", "application/json")
        return status, headers, payload


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects; every answer has a Content-Length
    hub = None

    def serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        status, headers, body = self.hub.handle(
            self.command, urlsplit(self.path).path, self.headers.get("Authorization", ""), raw_body
        )
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = serve

    def log_message(self, *args):
        pass
