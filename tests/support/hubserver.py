"""A local stand-in for the Hugging Face Hub: the routes huggingface_hub uses, with Range, redirects, a request log.

Routes: GET /api/models/{repo}/tree/{rev}[/{path}] (paginated with a Link header), GET /api/models/{repo}[/revision/
{rev}], HEAD/GET /{repo}/resolve/{rev}/{path} (302 to a "CDN" on another host name, as the real Hub does, with
X-Repo-Commit / X-Linked-Size / X-Linked-Etag), HEAD/GET /cdn/{sha}/{path} with Range. Gated and missing repos
answer with the X-Error-Code headers huggingface_hub maps to its exceptions.

Faults for the reliability tests: `faults` (a status such as 503, an empty 200 body, a stall, or an answer held
until the test releases it, on the requests whose URL path matches), `url_ttl` (signed CDN URLs that expire,
answering 403 after), `Repo.update` (an upstream change: new bytes, new sha256, new commit), `Repo.hidden` (listed,
but 404 on resolve), `on_blob` (a hook run as a download starts, e.g. to change a file mid-pull).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


@dataclass
class Repo:
    files: dict[str, Path]  # repo path -> local file
    gated: bool = False
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    sha: dict[str, str] = field(default_factory=dict)
    hidden: set[str] = field(default_factory=set)  # listed, but the Hub answers 404 for them

    def __post_init__(self) -> None:
        for p, f in self.files.items():
            self.sha[p] = _identity(f)

    def update(self, path: str, local: Path) -> None:
        """An upstream change: the file now has these bytes (and a new sha256), in a new commit."""
        self.files[path] = local
        self.sha[path] = _identity(local)
        self.commit = hashlib.sha1(self.commit.encode()).hexdigest()


def _identity(f: Path) -> str:
    if f.stat().st_size < 256 << 20:
        return hashlib.sha256(f.read_bytes()).hexdigest()
    with f.open("rb") as fh:  # sparse giants are never downloaded: an identity is enough, hashing them whole is not
        return hashlib.sha256(fh.read(1 << 20) + str(f.stat().st_size).encode()).hexdigest()


@dataclass
class Fault:
    """Answer the requests whose URL path matches `match` (a regex) with `status` (0: a 200 with an empty body;
    None: the normal answer) after `delay` seconds, `times` times (-1: always). With `hold`, the answer waits until
    the test sets that event (at most HOLD_MAX_S): a download that stays in flight exactly as long as a test needs,
    whatever the machine's load, where a delay would be a head start."""

    match: str
    status: int | None = 503
    times: int = 1
    delay: float = 0.0
    method: str | None = None  # only this method (HEAD, GET)
    ranged: bool | None = None  # only requests with a Range header (header reads) or without (whole downloads)
    hits: int = 0
    hold: threading.Event | None = None


HOLD_MAX_S = 600  # a held answer goes out after this long even if the test never releases it (a failed test)


@dataclass
class Request:
    method: str
    path: str  # repo path for file requests, the URL path otherwise
    range: str | None
    bytes_sent: int


class HubServer:
    def __init__(self, page_size: int = 3) -> None:
        self.repos: dict[str, Repo] = {}
        self.log: list[Request] = []
        self.page_size = page_size
        self.cut_after: dict[str, int] = {}  # repo path -> drop the connection after this many body bytes
        self.cuts_left: dict[str, int] = {}  # repo path -> how many more times to do it (default once)
        self.faults: list[Fault] = []
        self.url_ttl: float | None = None  # signed CDN URLs expire after this many seconds (403 after)
        self.on_blob: Callable[[str], None] | None = None  # called with the repo path as a download starts
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def do_HEAD(self) -> None:
                server.handle(self, head=True)

            def do_GET(self) -> None:
                server.handle(self, head=False)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that hangs up early (runq stopping a download on purpose) is not news

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.cdn = f"http://localhost:{self.port}"  # another host name: huggingface_hub stops HEAD redirects there
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def bytes_for(self, path: str) -> int:
        return sum(r.bytes_sent for r in self.log if r.path == path)

    # --- routing ---------------------------------------------------------------------------------

    def _fault(self, h: BaseHTTPRequestHandler, path: str) -> bool:
        """Play the first matching fault; True when it answered the request."""
        with self.lock:
            ranged = "Range" in h.headers
            fault = next((f for f in self.faults if f.times != 0 and re.search(f.match, path)
                          and f.method in (None, h.command) and f.ranged in (None, ranged)), None)  # fmt: skip
            if fault is None:
                return False
            fault.times -= 1 if fault.times > 0 else 0
            fault.hits += 1
        self.log.append(Request(h.command, "fault:" + path, h.headers.get("Range"), 0))
        if fault.delay:
            time.sleep(fault.delay)
        if fault.hold is not None:
            fault.hold.wait(HOLD_MAX_S)
        if fault.status is None:
            return False
        if fault.status == 0:
            h.send_response(200)
            h.send_header("Content-Length", "0")
            h.end_headers()
        else:
            self.error(h, fault.status, "", f"injected {fault.status}")
        return True

    def handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        url = urlparse(h.path)
        path = unquote(url.path)
        if self.faults and self._fault(h, path):
            return
        if m := re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$", path):
            return self.tree(h, m.group(1), m.group(3) or "", parse_qs(url.query))
        if m := re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$", path):
            return self.info(h, m.group(1))
        if m := re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path):
            return self.resolve(h, m.group(1), m.group(3), head)
        if m := re.match(r"^/cdn/([^/]+/[^/]+)/(.+)$", path):
            expires = parse_qs(url.query).get("expires")
            if expires and time.time() > float(expires[0]):
                return self.error(h, 403, "", "Request has expired")  # what a CDN says for an old signed URL
            return self.blob(h, m.group(1), m.group(2), head)
        self.error(h, 404, "NotFound", "no such route")

    def repo_or_error(self, h: BaseHTTPRequestHandler, name: str) -> Repo | None:
        repo = self.repos.get(name)
        if repo is None:
            self.error(h, 404, "RepoNotFound", f"Repository Not Found for url: {h.path}")
            return None
        if repo.gated and "authorization" not in {k.lower() for k in h.headers}:
            self.error(h, 401, "GatedRepo", "Access to this repo is restricted")
            return None
        return repo

    def error(self, h: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def send_json(self, h: BaseHTTPRequestHandler, data: object, link: str | None = None) -> None:
        body = json.dumps(data).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        if link:
            h.send_header("Link", f'<{link}>; rel="next"')
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
        self.log.append(Request(h.command, urlparse(h.path).path, None, 0))

    def tree(self, h: BaseHTTPRequestHandler, name: str, under: str, q: dict[str, list[str]]) -> None:
        repo = self.repo_or_error(h, name)
        if repo is None:
            return
        entries: list[dict[str, object]] = []
        dirs = sorted({p.rsplit("/", 1)[0] for p in repo.files if "/" in p})
        for d in dirs:
            entries.append({"type": "directory", "oid": "0" * 40, "path": d})
        for p, f in sorted(repo.files.items()):
            size = f.stat().st_size
            entries.append({"type": "file", "oid": repo.sha[p][:40], "size": size, "path": p,
                            "lfs": {"oid": repo.sha[p], "size": size, "pointerSize": 134}})  # fmt: skip
        entries = [e for e in entries if str(e["path"]).startswith(under)]
        start = int(q.get("cursor", ["0"])[0])
        page = entries[start : start + self.page_size]
        more = start + self.page_size < len(entries)
        link = f"{self.endpoint}/api/models/{name}/tree/main?recursive=true&cursor={start + self.page_size}"
        self.send_json(h, page, link if more else None)

    def info(self, h: BaseHTTPRequestHandler, name: str) -> None:
        repo = self.repo_or_error(h, name)
        if repo is None:
            return
        self.send_json(h, {"id": name, "sha": repo.commit, "private": False, "gated": repo.gated,
                           "siblings": [{"rfilename": p} for p in sorted(repo.files)]})  # fmt: skip

    def resolve(self, h: BaseHTTPRequestHandler, name: str, path: str, head: bool) -> None:
        repo = self.repo_or_error(h, name)
        if repo is None:
            return
        if path not in repo.files or path in repo.hidden:
            self.error(h, 404, "EntryNotFound", f"{path} does not exist")
            return
        size = repo.files[path].stat().st_size
        signed = f"?expires={time.time() + self.url_ttl}" if self.url_ttl is not None else ""
        h.send_response(302)
        h.send_header("Location", f"{self.cdn}/cdn/{name}/{path}{signed}")
        h.send_header("X-Repo-Commit", repo.commit)
        h.send_header("X-Linked-Size", str(size))
        h.send_header("X-Linked-Etag", f'"{repo.sha[path]}"')
        h.send_header("ETag", f'"{repo.sha[path][:40]}"')
        h.send_header("Content-Length", "0")
        h.end_headers()
        self.log.append(Request(h.command, "resolve:" + path, h.headers.get("Range"), 0))

    def blob(self, h: BaseHTTPRequestHandler, name: str, path: str, head: bool) -> None:
        repo = self.repos[name]
        data_path = repo.files[path]
        size = data_path.stat().st_size
        rng = h.headers.get("Range")
        start, end = 0, size - 1
        status = 200
        if rng and (m := re.match(r"bytes=(\d+)-(\d*)$", rng)):
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
            status = 206
        length = max(0, end - start + 1)
        h.send_response(status)
        h.send_header("Content-Length", str(length))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("ETag", f'"{repo.sha[path]}"')
        h.send_header("X-Repo-Commit", repo.commit)
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        h.end_headers()
        sent = 0
        if not head and self.on_blob is not None:
            self.on_blob(path)
        if not head:
            with self.lock:
                cut = self.cut_after.get(path)
                if cut is not None:
                    self.cuts_left[path] = self.cuts_left.get(path, 1) - 1
                    if self.cuts_left[path] <= 0:
                        del self.cut_after[path], self.cuts_left[path]
            with data_path.open("rb") as f:
                f.seek(start)
                remaining = length if cut is None else min(length, cut)
                while remaining > 0:
                    chunk = f.read(min(remaining, 1 << 16))
                    if not chunk:
                        break
                    h.wfile.write(chunk)
                    sent += len(chunk)
                    remaining -= len(chunk)
            if cut is not None and cut < length:
                h.wfile.flush()
                h.close_connection = True
                h.connection.shutdown(2)  # the network failed mid-way
        self.log.append(Request(h.command, path, rng, sent))
