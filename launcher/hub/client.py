"""The Hugging Face Hub client at the edge: endpoint, token, offline mode, the repo listing (cached), errors.

huggingface_hub is imported inside the functions (it is heavy). HF_ENDPOINT, HF_HUB_OFFLINE and HF_TOKEN are read
when a call is made. When the Hub fails (5xx, 429, no answer) the cached listing is used, and the output says so.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import HubError, Offline, Unavailable
from launcher.hub.layout import RemoteFile
from launcher.paths import runq_hub_dir

DEFAULT_ENDPOINT = "https://huggingface.co"
READ_RETRIES = 3  # a header read is tried 4 times (0.5, 1, 2 s apart) before its quant falls back to estimates
READ_BACKOFF_S = 0.5
PREFLIGHT_TRIES = 3
ON_DISK = "from the files on disk"  # a listing made from the Hugging Face cache's snapshot, not the Hub's


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_url(repo: str, path: str, revision: str) -> str:
    """The Hub's URL for a file (it redirects to the CDN). Built here from HF_ENDPOINT as it is now:
    huggingface_hub's hf_hub_url starts from the endpoint it saw when it was first imported."""
    from urllib.parse import quote

    return f"{endpoint()}/{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"


def token() -> str | None:
    if t := os.environ.get("HF_TOKEN"):
        return t
    from huggingface_hub import get_token

    return get_token()


@contextmanager
def hub_errors(repo: str) -> Iterator[None]:
    """huggingface_hub's and the network's exceptions as clear runq errors."""
    import httpx2
    from huggingface_hub import errors as hf

    try:
        yield
    except hf.GatedRepoError:
        raise HubError(
            f"{repo} is gated: it needs you to accept its license and a token",
            hint=f"accept it at {endpoint()}/{repo}, then set HF_TOKEN (or run `hf auth login`)",
        ) from None
    except hf.RepositoryNotFoundError:
        raise HubError(
            f"{repo} was not found on {endpoint()}",
            hint="check the name; a private repo needs HF_TOKEN",
        ) from None
    except hf.RevisionNotFoundError:
        raise HubError(f"{repo} has no such revision") from None
    except hf.RemoteEntryNotFoundError as e:
        raise HubError(f"{repo}: a file is missing on the Hub: {e}") from None
    except hf.OfflineModeIsEnabled:
        raise Offline("HF_HUB_OFFLINE is set") from None
    except hf.HfHubHTTPError as e:
        status = getattr(e.response, "status_code", 0) or 0
        first = str(e).splitlines()[0] if str(e) else ""
        if status == 429 or status >= 500:
            raise Unavailable(f"{endpoint()} answered {status} for {repo}: {first}") from None
        raise HubError(f"{endpoint()} answered with an error for {repo}: {first}") from None
    except (httpx2.TransportError, ConnectionError, TimeoutError) as e:
        raise Offline(f"cannot reach {endpoint()}: {e}") from None


# --- listing ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    repo: str
    revision: str
    files: tuple[RemoteFile, ...]
    sha256: dict[str, str]  # path -> LFS sha256 (the blob's identity), when the Hub gives it
    cached: bool = False
    why: str = ""  # cached: why the Hub was not asked (offline, or how it failed)


def _listing_path(repo: str, revision: str) -> Path:
    return runq_hub_dir(repo) / f"listing-{revision.replace('/', '--')}.json"


def list_repo(repo: str, revision: str = "main", *, network: bool = True) -> Listing:
    """Every file of the repo with its size, from the Hub, or from the last listing when offline."""
    if offline() or not network:
        why = "HF_HUB_OFFLINE is set" if network else "not asking the Hub now"
        return _cached_listing(repo, revision, why)
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    try:
        _preflight(repo, revision)
        with hub_errors(repo):
            entries = list(
                HfApi(endpoint=endpoint(), token=token()).list_repo_tree(repo, recursive=True, revision=revision)
            )
    except Unavailable as e:
        return _cached_listing(repo, revision, e.message)
    except Offline as e:
        return _cached_listing(repo, revision, f"offline: {e.message}")
    files = tuple(RemoteFile(e.path, int(e.size)) for e in entries if isinstance(e, RepoFile))
    sha = {e.path: e.lfs.sha256 for e in entries if isinstance(e, RepoFile) and e.lfs is not None}
    listing = Listing(repo, revision, files, sha)
    p = _listing_path(repo, revision)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"files": [[f.path, f.size] for f in files], "sha256": sha}))
    return listing


def _preflight(repo: str, revision: str) -> None:
    """A few quick requests: no network means offline now, and a Hub answering 5xx means "use the cache" now,
    not after 30 s of huggingface_hub's backoff."""
    import httpx2
    from huggingface_hub.utils import build_hf_headers, get_session, logging

    logging.set_verbosity_error()  # huggingface_hub's retry chatter is not for runq's users
    url = f"{endpoint()}/api/models/{repo}/revision/{revision}"
    status = 0
    for attempt in range(PREFLIGHT_TRIES):
        try:
            r = get_session().head(url, headers=build_hf_headers(token=token()), timeout=10, follow_redirects=True)
        except (httpx2.TransportError, OSError) as e:
            raise Offline(f"cannot reach {endpoint()}: {e}") from None
        status = r.status_code
        if status != 429 and status < 500:
            return
        if attempt + 1 < PREFLIGHT_TRIES:
            time.sleep(READ_BACKOFF_S * 2**attempt)
    raise Unavailable(f"{endpoint()} answered {status} ({PREFLIGHT_TRIES} tries)")


def _cached_listing(repo: str, revision: str, why: str) -> Listing:
    try:
        data = json.loads(_listing_path(repo, revision).read_text())
    except (OSError, ValueError):
        on_disk = snapshot_files(repo, revision)  # downloaded by another tool, never listed by runq
        if on_disk:
            return Listing(repo, revision, on_disk, {}, cached=True, why=f"{why}; {ON_DISK}")
        raise Offline(f"{why}, and {repo} has not been listed before") from None
    files = tuple(RemoteFile(p, s) for p, s in data["files"])
    return Listing(repo, revision, files, data.get("sha256", {}), cached=True, why=why)


def snapshot_dir(repo: str, revision: str = "main") -> Path | None:
    """The repo's snapshot in the Hugging Face cache: the one refs/REVISION names, else the newest."""
    from launcher.paths import hf_repo_dir

    root = hf_repo_dir(repo)
    try:
        ref = (root / "refs" / revision).read_text().strip()
    except OSError:
        ref = ""
    if ref and (root / "snapshots" / ref).is_dir():
        return root / "snapshots" / ref
    snaps = [d for d in (root / "snapshots").glob("*") if d.is_dir()] if (root / "snapshots").is_dir() else []
    return max(snaps, key=lambda d: d.stat().st_mtime, default=None)


def snapshot_files(repo: str, revision: str = "main") -> tuple[RemoteFile, ...]:
    """The .gguf files of the repo's snapshot on disk (symlinks into blobs/ followed; broken ones left out)."""
    snap = snapshot_dir(repo, revision)
    if snap is None:
        return ()
    found = sorted(p for p in snap.rglob("*.gguf") if p.is_file())
    return tuple(RemoteFile(str(p.relative_to(snap)), p.stat().st_size) for p in found)
