"""The Hub and the cache under faults: concurrent pulls, 503s, empty bodies, expired signed URLs, upstream changes,
missing shards, stale leftovers, Ctrl-C during header reads. Against tests/hubserver.py with the real client."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.measure.synth import write_model
from launcher.paths import hf_repo_dir
from tests.helpers import RUNQ_CMD, TINY, runq_proc, spawn, tiny_profile_toml, wait_until
from tests.support.hubserver import Fault, HubServer, Repo

_names = itertools.count()


HUB_PAGE_SIZE = 50  # the local Hub lists a repo in one page (tests/edge/conftest.py)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny-files")
    q8 = write_model(TINY, d / "UD-Q8_0" / "Tiny-UD-Q8_0.gguf", shards=3).paths
    f16 = write_model(TINY.with_(weight_type="F16"), d / "Tiny-F16.gguf").paths
    return {f"UD-Q8_0/{p.name}": p for p in q8} | {"Tiny-F16.gguf": f16[0]}


@pytest.fixture
def repo(server: HubServer, tiny_files: dict[str, Path], online: dict[str, str]) -> Iterator[tuple[str, Repo]]:
    """A fresh repo (its own name, so changes stay in this test) and the `tiny` profile pointing at it."""
    name = f"runq/Tiny{next(_names)}-GGUF"
    r = Repo(dict(tiny_files))
    server.repos[name] = r
    sizes = {
        "UD-Q8_0": sum(p.stat().st_size for k, p in tiny_files.items() if k.startswith("UD-Q8_0/")),
        "F16": tiny_files["Tiny-F16.gguf"].stat().st_size,
    }
    d = Path(os.environ["RUNQ_HOME"]) / "config" / "profiles"
    d.mkdir(parents=True, exist_ok=True)
    (d / "tiny.toml").write_text(tiny_profile_toml(name, sizes))
    yield name, r
    for f in server.faults:  # a failed test never leaves a download held
        if f.hold is not None:
            f.hold.set()
    server.faults.clear()


def shard(n: int) -> str:
    return f"UD-Q8_0/Tiny-UD-Q8_0-0000{n}-of-00003.gguf"


def snapshot_bytes(repo_name: str, path: str) -> bytes:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_name, path, cache_dir=os.environ["HF_HUB_CACHE"])
    assert isinstance(found, str), found
    return Path(found).read_bytes()


def changed_copy(src: Path, dest: Path) -> Path:
    """The same file, the same size, other bytes at the end (tensor data: the header stays valid)."""
    data = bytearray(src.read_bytes())
    data[-64:] = bytes(b ^ 0xFF for b in data[-64:])
    dest.write_bytes(bytes(data))
    return dest


# --- concurrency ----------------------------------------------------------------------------------


def test_two_concurrent_pulls_share_the_cache_safely(
    repo: tuple[str, Repo], server: HubServer, tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    """Two `runq pull` of one quant at once: one downloads each file, the other waits on huggingface_hub's lock
    file for it, and both end with the exact bytes (before: one mixed file under the shard's sha, a traceback).
    The Hub holds the downloads until one pull says it waits for the other."""
    name, r = repo
    held = threading.Event()
    server.faults.append(Fault(r"^/cdn/", status=None, times=-1, method="GET", ranged=False, hold=held))
    cmd = [*RUNQ_CMD, "pull", "tiny", "--quant", "UD-Q8_0"]
    logs = [(tmp_path / f"pull{i}.out", tmp_path / f"pull{i}.err") for i in (1, 2)]
    procs = []
    for o, e in logs:
        with o.open("w") as out, e.open("w") as err:
            procs.append(spawn(cmd, stdout=out, stderr=err))
    wait_until(lambda: any("Waiting: another download of UD-Q8_0/" in e.read_text() for _, e in logs), "a waiting pull")
    held.set()
    for p, (o, e) in zip(procs, logs, strict=True):
        assert p.wait(timeout=120) == 0, e.read_text()
        assert "Traceback" not in e.read_text() and "Ready: " in o.read_text()
    for n in (1, 2, 3):
        assert snapshot_bytes(name, shard(n)) == tiny_files[shard(n)].read_bytes()
    cache = Path(os.environ["HF_HUB_CACHE"])
    folder = "models--" + name.replace("/", "--")
    assert {p.name for p in (cache / ".locks" / folder).iterdir()} == {f"{r.sha[shard(n)]}.lock" for n in (1, 2, 3)}
    assert not [p for p in (cache / folder / "blobs").iterdir() if "incomplete" in p.name]
    # Each file went over the wire once: the waiting process found it finished.
    for n in (1, 2, 3):
        assert server.bytes_for(shard(n)) == tiny_files[shard(n)].stat().st_size


# --- the Hub failing ------------------------------------------------------------------------------


def test_a_hub_answering_503_falls_back_to_the_cache_and_says_so(repo: tuple[str, Repo], server: HubServer) -> None:
    """A fully downloaded model plans and dry-runs while the Hub answers 503 to everything; one never listed
    plans from estimates, and says so loudly."""
    server.faults.append(Fault(r".", status=503, times=-1))
    r = runq_proc("plan", "tiny", "--gpu", "none", "--ram", "8GiB", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["exact"] is False
    assert "Warning: the Hub could not be used" in r.stderr and "sizes are ESTIMATED" in r.stderr
    server.faults.clear()
    r = runq_proc("pull", "tiny", "--quant", "UD-Q8_0")
    assert r.returncode == 0, r.stderr
    server.faults.append(Fault(r".", status=503, times=-1))
    t0 = time.monotonic()
    r = runq_proc("plan", "tiny", "--quant", "UD-Q8_0", "--gpu", "none", "--ram", "8GiB", "--json")
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["quant"] == "UD-Q8_0" and data["exact"] is True
    assert "cached headers (" in data["sizes"] and "answered 503" in data["sizes"]
    assert "Warning: the Hub could not be used" in r.stderr and "listing cached earlier" in r.stderr
    r = runq_proc("run", "tiny", "--quant", "UD-Q8_0", "--dry-run", "--gpu", "none", "--ram", "8GiB")
    assert r.returncode == 0, r.stderr
    assert "would download" not in r.stderr
    cmd = next(line for line in r.stdout.splitlines() if line.startswith("[dry-run] would run:"))
    assert str(Path(os.environ["HF_HUB_CACHE"])) in cmd and "Tiny-UD-Q8_0-00001-of-00003.gguf" in cmd
    print(f"\nplan with the Hub answering 503 to everything: {took:.1f} s")


def test_metadata_503_is_retried(repo: tuple[str, Repo], server: HubServer, tiny_files: dict[str, Path]) -> None:
    server.faults.append(Fault(r"/resolve/.*-00002-of-00003", status=503, times=2, method="HEAD"))
    r = runq_proc("pull", "tiny", "--quant", "UD-Q8_0")
    assert r.returncode == 0, r.stderr
    assert server.faults[0].hits == 2
    assert snapshot_bytes(repo[0], shard(2)) == tiny_files[shard(2)].read_bytes()


def test_expired_signed_urls_are_resolved_again(
    repo: tuple[str, Repo], server: HubServer, tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    """The connection drops mid-file; by the retry (1 s later) the signed CDN URL has expired: the retry asks the
    Hub for a new one instead of hitting 403 five times."""
    server.url_ttl = 0.5
    src = tiny_files[shard(2)]
    server.cut_after[shard(2)] = src.stat().st_size // 2
    r = runq_proc("pull", "tiny", "--quant", "UD-Q8_0", "--dir", str(tmp_path / "m"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m" / shard(2)).read_bytes() == src.read_bytes()
    resolves = [x for x in server.log if x.method == "GET" and x.path == "resolve:" + shard(2)]
    assert len(resolves) == 2 and resolves[1].range is not None  # resolved again, then resumed


def test_an_empty_body_is_retried_a_few_times_then_named(
    repo: tuple[str, Repo], server: HubServer, tiny_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`200` with `Content-Length: 0`: bounded retries with backoff, then an error that names the file."""
    from launcher.catalog.profiles import require_profile
    from launcher.hub import client, transfer
    from launcher.hub import download as dl
    from launcher.hub.layout import quants_by_name

    monkeypatch.setattr(dl, "BACKOFF_S", 0.01)
    listing = client.list_repo(repo[0])
    quant = quants_by_name(require_profile("tiny"), listing.files)["F16"]
    fault = Fault(r"^/cdn/.*Tiny-F16", status=0, times=-1, method="GET")
    server.faults.append(fault)
    with pytest.raises(dl.DownloadError) as e:
        transfer.download(listing, quant, None, lambda f: None, lambda d, t: None)
    assert fault.hits == dl.RETRIES + 1
    assert "the download of Tiny-F16.gguf keeps failing" in e.value.message and "no bytes" in e.value.message
    assert repo[1].sha["Tiny-F16.gguf"] not in e.value.message  # the file's name, not the blob's sha
    fault.times, fault.hits = 2, 0  # two empty answers, then the file
    (path,) = transfer.download(listing, quant, None, lambda f: None, lambda d, t: None)
    assert fault.hits == 2 and path.read_bytes() == tiny_files["Tiny-F16.gguf"].read_bytes()


# --- what the Hub has changing ---------------------------------------------------------------------


@pytest.mark.parametrize("where", ["cache", "dir"])
def test_an_upstream_update_of_the_same_size_is_fetched(
    where: str, repo: tuple[str, Repo], server: HubServer, tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    name, r = repo
    extra = ["--dir", str(tmp_path / "m")] if where == "dir" else []
    assert runq_proc("pull", "tiny", "--quant", "F16", *extra).returncode == 0
    new = changed_copy(tiny_files["Tiny-F16.gguf"], tmp_path / "Tiny-F16.gguf")
    r.update("Tiny-F16.gguf", new)
    out = runq_proc("pull", "tiny", "--quant", "F16", *extra)
    assert out.returncode == 0, out.stderr
    assert "0 already here" in out.stdout
    got = (tmp_path / "m" / "Tiny-F16.gguf").read_bytes() if extra else snapshot_bytes(name, "Tiny-F16.gguf")
    assert got == new.read_bytes()
    again = runq_proc("pull", "tiny", "--quant", "F16", *extra)
    assert "1 already here, 0 B to download" in again.stdout


def test_a_file_changed_mid_pull_stops_before_downloading_it(
    repo: tuple[str, Repo], server: HubServer, tiny_files: dict[str, Path], tmp_path: Path
) -> None:

    name, r = repo
    r_sha1, r_sha2 = r.sha[shard(1)], r.sha[shard(2)]
    new = changed_copy(tiny_files[shard(3)], tmp_path / "shard3.gguf")
    server.on_blob = lambda path: r.update(shard(3), new) if path == shard(1) else None
    out = runq_proc("pull", "tiny", "--quant", "UD-Q8_0")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"Error: {shard(3)} changed on the Hub during the download" in out.stderr
    assert "lists the repo afresh" in out.stderr
    # One request for it, answered with the new sha256 in its headers: runq closed it without keeping a byte.
    assert len([x for x in server.log if x.method == "GET" and x.path == "resolve:" + shard(3)]) == 1
    blobs = hf_repo_dir(name) / "blobs"
    assert sorted(p.name for p in blobs.iterdir()) == sorted([r_sha1, r_sha2])


def test_a_missing_shard_is_found_before_downloading_the_others(
    server: HubServer, tiny_files: dict[str, Path], online: dict[str, str], repo: tuple[str, Repo]
) -> None:
    name, r = repo
    del r.files[shard(2)]  # not in the listing
    out = runq_proc("pull", "tiny", "--quant", "UD-Q8_0")
    assert out.returncode == 1 and f"{shard(2)} not there" in out.stderr and "Traceback" not in out.stderr
    r.files[shard(2)] = tiny_files[shard(2)]
    r.hidden.add(shard(3))  # listed, but the Hub has no such file
    out = runq_proc("pull", "tiny", "--quant", "UD-Q8_0")
    assert out.returncode == 1 and f"Error: {shard(3)} is not in {name} any more" in out.stderr
    assert not [x for x in server.log if x.bytes_sent]  # nothing downloaded either time


def test_stale_parts_and_corrupt_copies_are_removed_when_safe(
    repo: tuple[str, Repo], server: HubServer, tiny_files: dict[str, Path]
) -> None:
    from filelock import FileLock

    from launcher.hub import download as dl

    name, r = repo
    blobs = hf_repo_dir(name) / "blobs"
    blobs.mkdir(parents=True)
    old = time.time() - 3600
    orphan, orphan_corrupt, locked, fresh = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
    live = r.sha[shard(1)]  # a part of a file the repo has: it can be continued, never removed
    files = {
        "orphan": blobs / f"{orphan}.incomplete",
        "corrupt": blobs / f"{orphan_corrupt}.incomplete.corrupt",
        "locked": blobs / f"{locked}.incomplete",
        "fresh": blobs / f"{fresh}.incomplete",
        "live": blobs / f"{live}.incomplete",
        "hf-temp": blobs / f"{orphan}.1a2b3c4d.incomplete",  # huggingface_hub's own temporary file: not ours
    }
    for key, p in files.items():
        p.write_bytes(tiny_files[shard(1)].read_bytes()[:100_000] if key == "live" else b"x" * 100)
        if key != "fresh":
            os.utime(p, (old, old))
    lock = FileLock(str(dl.target_for(name, "", locked, "", None).lock))
    lock.acquire()
    try:
        assert dl.stale_files(name, set(r.sha.values())) == sorted([files["orphan"], files["corrupt"]])
        out = runq_proc("pull", "tiny", "--quant", "UD-Q8_0")
        assert out.returncode == 0, out.stderr
    finally:
        lock.release()
    assert {k for k, p in files.items() if p.exists()} == {"locked", "fresh", "hf-temp"}  # "live" was completed


# --- remote planning ------------------------------------------------------------------------------


def test_header_reads_retry_then_fall_back_loudly(repo: tuple[str, Repo], server: HubServer) -> None:
    from launcher.paths import cache_dir

    server.faults.append(Fault(r"^/cdn/.*Tiny-F16", status=503, times=2, method="GET"))
    r = runq_proc("plan", "tiny", "--gpu", "none", "--ram", "8GiB", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["sizes"].startswith("exact: 2 of 2 quants")  # retried, not estimated
    for p in (cache_dir() / "hub").rglob("*.hdr"):
        p.unlink()
    server.faults[:] = [Fault(r"^/cdn/.*Tiny-F16", status=503, times=-1, method="GET")]
    r = runq_proc("plan", "tiny", "--gpu", "none", "--ram", "8GiB", "--json")
    assert r.returncode == 0, r.stderr
    assert "estimated for the rest" in json.loads(r.stdout)["sizes"]
    assert "Warning: the GGUF headers of 1 quant(s) could not be read from the Hub" in r.stderr
    assert "ESTIMATED" in r.stderr
    assert server.faults[0].hits == 4  # tried 4 times


def test_ctrl_c_during_header_reads_acts_at_once(repo: tuple[str, Repo], server: HubServer, tmp_path: Path) -> None:
    """A Hub that stalls (header reads held until the test ends): Ctrl-C ends runq at once, not after the read's
    60 s timeout."""
    server.faults.append(Fault(r"^/cdn/", status=None, times=-1, method="GET", hold=threading.Event()))
    p = spawn([*RUNQ_CMD, "plan", "tiny", "--gpu", "none", "--ram", "8GiB"])
    try:
        wait_until(lambda: server.faults[0].hits, "the header read never started")
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130 and "Traceback" not in err
    assert took < 30, f"took {took:.1f} s after Ctrl-C"  # half the read's timeout: it did not wait for the read
    print(f"\nCtrl-C during header reads: runq exited {took:.2f} s after the signal")


def _said(path: Path, text: str) -> None:
    """Wait until a running process has written `text` to its output file."""
    wait_until(lambda: text in path.read_text(errors="replace"), f"{text!r} in {path.name}")


# huggingface_hub downloading one file (argv[1]) of a repo, saying at INFO when it waits for another's lock.
HF_DOWNLOAD = (
    "import sys; from huggingface_hub import constants, hf_hub_download; from huggingface_hub.utils import logging; "
    "logging.set_verbosity_info(); constants.FILELOCK_LOG_EVERY_SECONDS = 0.5; "
    "print(hf_hub_download(sys.argv[1], sys.argv[2]))"
)


def test_runq_and_huggingface_hub_wait_for_each_other(
    repo: tuple[str, Repo], server: HubServer, tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    """The lock file is huggingface_hub's own: a `hf_hub_download` of a file runq is downloading waits and then
    finds it done, and runq waits for one huggingface_hub is downloading. Each file crosses the wire once.

    The Hub holds each download until the other side has said that it waits (no head start to race)."""
    name, _ = repo
    hf = [sys.executable, "-c", HF_DOWNLOAD, name]
    out = {k: tmp_path / k for k in ("pull.out", "pull.err", "hf.out", "hf.err", "pull2.err", "hf3.err")}

    def started(path: str) -> None:
        wait_until(lambda: any(x.path == f"fault:/cdn/{name}/{path}" for x in server.log), f"a download of {path}")

    held = threading.Event()
    server.faults.append(Fault(r"^/cdn/.*UD-Q8_0", status=None, times=-1, method="GET", ranged=False, hold=held))
    with out["pull.out"].open("w") as o, out["pull.err"].open("w") as e:
        first = spawn([*RUNQ_CMD, "pull", "tiny", "--quant", "UD-Q8_0"], stdout=o, stderr=e)
    started(shard(1))
    with out["hf.out"].open("w") as o, out["hf.err"].open("w") as e:
        other = spawn([*hf, shard(1)], stdout=o, stderr=e)
    _said(out["hf.err"], "Still waiting to acquire lock")  # runq holds the lock
    held.set()
    assert other.wait(timeout=120) == 0, out["hf.err"].read_text()
    assert Path(out["hf.out"].read_text().strip()).read_bytes() == tiny_files[shard(1)].read_bytes()
    assert first.wait(timeout=120) == 0, out["pull.err"].read_text()

    held = threading.Event()
    server.faults[:] = [Fault(r"^/cdn/.*Tiny-F16", status=None, times=-1, method="GET", ranged=False, hold=held)]
    with out["hf3.err"].open("w") as e:
        hf3 = spawn([*hf, "Tiny-F16.gguf"], stdout=subprocess.DEVNULL, stderr=e)
    started("Tiny-F16.gguf")
    with out["pull2.err"].open("w") as e:
        second = spawn([*RUNQ_CMD, "pull", "tiny", "--quant", "F16"], stdout=subprocess.DEVNULL, stderr=e)
    _said(out["pull2.err"], "Waiting: another download of Tiny-F16.gguf")  # huggingface_hub holds the lock now
    held.set()
    assert second.wait(timeout=120) == 0, out["pull2.err"].read_text()
    assert hf3.wait(timeout=120) == 0, out["hf3.err"].read_text()
    for path in (shard(1), shard(2), shard(3), "Tiny-F16.gguf"):
        assert server.bytes_for(path) == tiny_files[path].stat().st_size, path  # once
