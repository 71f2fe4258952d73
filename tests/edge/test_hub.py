"""The Hub through the real huggingface_hub client, pointed (HF_ENDPOINT) at a local server the tests start."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from launcher.catalog.profiles import parse_profile, require_profile
from launcher.catalog.sources import ModelSource
from launcher.hub.layout import RemoteFile, group_quants, match_profile, missing_warning, quant_tag
from launcher.llama.build import Build
from launcher.machine.spec import MachineSpec
from launcher.measure.synth import write_model
from launcher.model.shards import open_local
from launcher.plan.choose import choose
from launcher.plan.types import Request
from tests.helpers import TINY, RunningRunq, runq_proc, session_cache, write_tiny_profile
from tests.support.hubserver import HubServer, Repo
from tests.support.sparse_models import write_sparse_quant

if TYPE_CHECKING:
    from textual.pilot import Pilot

DS = require_profile("deepseek-v3.1")


@pytest.fixture(scope="module")
def tiny_repo(server: HubServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    d = tmp_path_factory.mktemp("tiny-repo")
    q8 = write_model(TINY, d / "UD-Q8_0" / "Tiny-UD-Q8_0.gguf", shards=3).paths
    f16 = write_model(TINY.with_(weight_type="F16"), d / "Tiny-F16.gguf").paths
    files = {f"UD-Q8_0/{p.name}": p for p in q8} | {"Tiny-F16.gguf": f16[0], "README.md": d / "README.md"}
    (d / "README.md").write_text("tiny\n")
    server.repos["runq/Tiny-GGUF"] = Repo(files)
    server.repos["runq/Gated-GGUF"] = Repo(dict(files), gated=True)
    return {"UD-Q8_0": list(q8), "F16": list(f16)}


@pytest.fixture(scope="module")
def deepseek_repo(server: HubServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Two quants of DeepSeek-V3.1 with real-shaped headers and sparse data: 426 GB that take a few MB."""
    d = tmp_path_factory.mktemp("deepseek-repo")
    out = {q: write_sparse_quant(DS, DS.quant(q), d) for q in ("UD-TQ1_0", "UD-Q2_K_XL")}
    server.repos[DS.repo] = Repo({str(p.relative_to(d)): p for ps in out.values() for p in ps})
    return out


# --- layout (pure) ----------------------------------------------------------------------------------


def test_quant_tags_and_grouping() -> None:
    assert quant_tag("UD-Q2_K_XL/DeepSeek-V3.1-UD-Q2_K_XL-00001-of-00006.gguf") == "UD-Q2_K_XL"
    assert quant_tag("DeepSeek-V3.1-UD-TQ1_0.gguf") == "UD-TQ1_0"
    assert quant_tag("Qwen3-30B-A3B-Instruct-2507-Q4_K_M.gguf") == "Q4_K_M"
    assert quant_tag("gpt-oss-120b-F16.gguf") == "F16"
    files = [RemoteFile("A/x-00002-of-00002.gguf", 5), RemoteFile("A/x-00001-of-00002.gguf", 7),
             RemoteFile("m-BF16.gguf", 3), RemoteFile("mmproj-F16.gguf", 1), RemoteFile("README.md", 1)]  # fmt: skip
    qs = group_quants(files)
    assert [(q.name, q.size_bytes, [f.path for f in q.files]) for q in qs] == [
        ("BF16", 3, ["m-BF16.gguf"]),
        ("A", 12, ["A/x-00001-of-00002.gguf", "A/x-00002-of-00002.gguf"]),
    ]


def test_profile_match_warns_on_disagreement() -> None:
    files = [RemoteFile("DeepSeek-V3.1-UD-TQ1_0.gguf", 170_499_768_256)]
    files += [
        RemoteFile(f"UD-Q2_K_XL/DeepSeek-V3.1-UD-Q2_K_XL-0000{i}-of-00006.gguf", 50_000_000_000) for i in range(1, 7)
    ]
    files += [RemoteFile("Q8_0/DeepSeek-V3.1-Q8_0-00001-of-00001.gguf", 700_000_000_000)]
    matches = {(m.spec.name if m.spec else m.remote.name): m for m in match_profile(DS, group_quants(files))}  # type: ignore[union-attr]
    assert matches["UD-TQ1_0"].warning is None
    assert "the Hub has 300.0 GB, the profile says 255.4 GB" in matches["UD-Q2_K_XL"].warning  # type: ignore[operator]
    assert matches["UD-IQ1_S"].remote is None
    assert "11 of 13 quants of the profile are not in unsloth/DeepSeek-V3.1-GGUF" in (
        missing_warning(DS, list(matches.values())) or ""
    )
    assert matches["Q8_0"].spec is None  # on the Hub, unknown to the profile: still offered


# --- listing and remote headers --------------------------------------------------------------------


def test_listing_follows_pages(online: dict[str, str], tiny_repo: dict[str, list[Path]], server: HubServer) -> None:
    from launcher.hub import client

    listing = client.list_repo("runq/Tiny-GGUF")
    assert {f.path for f in listing.files} >= {"Tiny-F16.gguf", "UD-Q8_0/Tiny-UD-Q8_0-00003-of-00003.gguf"}
    assert sum(1 for r in server.log if "/tree/" in r.path) >= 2  # page_size 3: more than one page
    assert [q.name for q in group_quants(listing.files)] == ["UD-Q8_0", "F16"]


def test_remote_headers_read_a_sliver_and_plan_like_local_files(
    online: dict[str, str], deepseek_repo: dict[str, list[Path]], server: HubServer
) -> None:
    from launcher.hub import headers

    found = headers.exact_sources(DS)
    assert set(found.sources) == {"UD-TQ1_0", "UD-Q2_K_XL"} and found.available == ("UD-TQ1_0", "UD-Q2_K_XL")
    assert found.status.startswith("exact: 2 of 2 quants from the GGUF headers on http://127.0.0.1")
    # Bytes on the wire: one 8 MiB request per first shard (the 5 MB header fits), 256 KiB for the others.
    files = [p for ps in deepseek_repo.values() for p in ps]
    sent = {
        p.name: server.bytes_for(str(p.relative_to(p.parents[1] if "UD-Q2" in p.name else p.parent))) for p in files
    }
    total_size = sum(p.stat().st_size for p in files)
    assert sum(sent.values()) < 20 * 2**20 < total_size / 10_000
    assert sent["DeepSeek-V3.1-UD-Q2_K_XL-00001-of-00006.gguf"] == 8 * 2**20
    assert sent["DeepSeek-V3.1-UD-Q2_K_XL-00002-of-00006.gguf"] == 256 * 2**10
    # The same plan as from the files on disk.
    m = MachineSpec.model_validate({"gpus": [{"memory": "24GiB"}], "ram": "256GiB", "cores": 16}).to_machine()
    local = open_local(deepseek_repo["UD-Q2_K_XL"][0])
    local_src = ModelSource("UD-Q2_K_XL", local.tensors, local.hparams, exact=True, size_bytes=local.file_bytes)
    a = choose("x", m, [found.sources["UD-Q2_K_XL"]], Request(ctx=16384)).chosen.plan
    b = choose("x", m, [local_src], Request(ctx=16384)).chosen.plan
    assert a == b
    # A second plan reads the header cache: nothing but the listing goes over the wire.
    server.log.clear()
    headers.exact_sources(DS)
    assert all("/tree/" in r.path or "/revision/" in r.path for r in server.log)


def test_plan_uses_remote_headers_then_the_cache_offline(
    online: dict[str, str], deepseek_repo: dict[str, list[Path]]
) -> None:
    r = runq_proc("plan", "deepseek-v3.1", "--gpu", "24GiB", "--ram", "256GiB", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["quant"] == "UD-Q2_K_XL" and data["exact"] is True
    assert data["sizes"].startswith("exact: 2 of 2 quants from the GGUF headers")
    assert [c["quant"] for c in data["candidates"]] == ["UD-TQ1_0", "UD-Q2_K_XL"]  # what the repo really has
    offline = {**online, "HF_HUB_OFFLINE": "1"}
    r = runq_proc("plan", "deepseek-v3.1", "--gpu", "24GiB", "--ram", "256GiB", "--json", env=offline)
    data = json.loads(r.stdout)
    assert data["exact"] is True and "cached headers (offline)" in data["sizes"]
    r = runq_proc("plan", "deepseek-v3.1", "--gpu", "24GiB", "--ram", "256GiB", "--estimate", "--json", env=offline)
    assert json.loads(r.stdout)["exact"] is False


# --- downloads -------------------------------------------------------------------------------------


def test_pull_downloads_exactly_one_quant(
    online: dict[str, str], tiny_repo: dict[str, list[Path]], server: HubServer
) -> None:
    write_tiny_profile("runq/Tiny-GGUF", tiny_repo)
    r = runq_proc("pull", "tiny", "--quant", "Q8_0")
    assert r.returncode == 0, r.stderr
    assert "[3/3] UD-Q8_0/Tiny-UD-Q8_0-00003-of-00003.gguf" in r.stdout
    assert "Ready: " in r.stdout and "3 file(s)" in r.stdout
    downloaded = {r.path for r in server.log if r.method == "GET" and r.bytes_sent and not r.range}
    assert downloaded == {f"UD-Q8_0/{p.name}" for p in tiny_repo["UD-Q8_0"]}  # not the F16 file
    # In the Hugging Face cache layout, so huggingface_hub (and other tools) find it.
    from huggingface_hub import try_to_load_from_cache

    first = f"UD-Q8_0/{tiny_repo['UD-Q8_0'][0].name}"
    cached = try_to_load_from_cache("runq/Tiny-GGUF", first, cache_dir=os.environ["HF_HUB_CACHE"])
    assert isinstance(cached, str) and Path(cached).read_bytes() == tiny_repo["UD-Q8_0"][0].read_bytes()
    # Once there, a second pull downloads nothing and says so.
    server.log.clear()
    r = runq_proc("pull", "tiny", "--quant", "UD-Q8_0")
    assert r.returncode == 0 and "3 already here, 0 B to download" in r.stdout
    assert not [x for x in server.log if x.bytes_sent]
    r = runq_proc("models", "--local", "--json")
    quants = json.loads(r.stdout)["quants"]
    assert [(q["repo"], q["quant"], q["complete"], q["files"]) for q in quants] == [
        ("runq/Tiny-GGUF", "UD-Q8_0", True, 3)
    ]


def test_network_failure_mid_file_continues_where_it_stopped(
    online: dict[str, str], tiny_repo: dict[str, list[Path]], server: HubServer, tmp_path: Path
) -> None:
    write_tiny_profile("runq/Tiny-GGUF", tiny_repo)
    src2 = tiny_repo["UD-Q8_0"][1]
    shard2 = f"UD-Q8_0/{src2.name}"
    server.cut_after[shard2] = src2.stat().st_size // 2  # the connection drops half-way through shard 2
    r = runq_proc("pull", "tiny", "--quant", "UD-Q8_0", "--dir", str(tmp_path / "models"))
    assert r.returncode == 0, r.stderr
    resumed = [x for x in server.log if x.path == shard2 and x.range]
    assert resumed and int(resumed[0].range.removeprefix("bytes=").split("-")[0]) >= 1 << 20  # type: ignore[union-attr]
    assert server.bytes_for(shard2) < src2.stat().st_size * 1.5  # not fetched again from zero
    assert (tmp_path / "models" / shard2).read_bytes() == src2.read_bytes()


def test_interrupted_download_is_continued_by_the_next_run(
    online: dict[str, str], tiny_repo: dict[str, list[Path]], server: HubServer, tmp_path: Path
) -> None:
    """A run killed mid-file leaves its part; the next run keeps the finished shards and continues the part."""
    write_tiny_profile("runq/Tiny-GGUF", tiny_repo)
    q8 = tiny_repo["UD-Q8_0"]
    dest = tmp_path / "models" / "UD-Q8_0"
    dest.mkdir(parents=True)
    (dest / q8[0].name).write_bytes(q8[0].read_bytes())  # finished in the earlier run
    half = q8[1].stat().st_size // 2
    (dest / (q8[1].name + ".runq-partial")).write_bytes(q8[1].read_bytes()[:half])
    r = runq_proc("pull", "tiny", "--quant", "UD-Q8_0", "--dir", str(tmp_path / "models"))
    assert r.returncode == 0, r.stderr
    assert "1 already here" in r.stdout and "Continuing interrupted downloads" in r.stdout
    assert server.bytes_for(f"UD-Q8_0/{q8[0].name}") == 0
    assert [x.range for x in server.log if x.path == f"UD-Q8_0/{q8[1].name}"] == [f"bytes={half}-"]
    assert server.bytes_for(f"UD-Q8_0/{q8[1].name}") == q8[1].stat().st_size - half
    assert (dest / q8[1].name).read_bytes() == q8[1].read_bytes()
    assert not (dest / (q8[1].name + ".runq-partial")).exists()


def test_a_corrupt_part_is_detected_and_kept_aside(
    online: dict[str, str], tiny_repo: dict[str, list[Path]], tmp_path: Path
) -> None:
    write_tiny_profile("runq/Tiny-GGUF", tiny_repo)
    f16 = tiny_repo["F16"][0]
    dest = tmp_path / "models"
    dest.mkdir()
    (dest / (f16.name + ".runq-partial")).write_bytes(b"\0" * 4096)  # not what the Hub has
    r = runq_proc("pull", "tiny", "--quant", "F16", "--dir", str(dest))
    assert r.returncode == 1 and "do not match the Hub's sha256" in r.stderr and "Traceback" not in r.stderr
    assert not (dest / f16.name).exists() and (dest / (f16.name + ".runq-partial.corrupt")).exists()
    r = runq_proc("pull", "tiny", "--quant", "F16", "--dir", str(dest))  # the next run starts that file afresh
    assert r.returncode == 0, r.stderr
    assert (dest / f16.name).read_bytes() == f16.read_bytes()


def test_pull_refuses_when_the_disk_is_too_small(
    online: dict[str, str], tiny_repo: dict[str, list[Path]], server: HubServer
) -> None:
    write_tiny_profile("runq/Tiny-GGUF", tiny_repo)
    r = runq_proc("pull", "tiny", "--quant", "F16", "--disk-free", "100MB")
    assert r.returncode == 1
    assert "Error: not enough disk space" in r.stderr and "MB still to download" in r.stderr
    assert "Hint: free some space, or download elsewhere with --dir" in r.stderr
    assert not [x for x in server.log if x.bytes_sent]


def test_truncated_or_missing_shards_are_reported(tiny_repo: dict[str, list[Path]], tmp_path: Path) -> None:
    d = tmp_path / "models" / "UD-Q8_0"
    d.mkdir(parents=True)
    for p in tiny_repo["UD-Q8_0"]:
        (d / p.name).write_bytes(p.read_bytes())
    shard2 = d / tiny_repo["UD-Q8_0"][1].name
    shard2.write_bytes(shard2.read_bytes()[:-1000])
    r = runq_proc("models", "--local", "--dir", str(tmp_path / "models"), "--json")
    (q,) = json.loads(r.stdout)["quants"]
    assert not q["complete"] and "truncated" in q["problem"]
    shard2.unlink()
    r = runq_proc("models", "--local", "--dir", str(tmp_path / "models"))
    assert "2/3 files" in r.stdout and "1 of 3 shards missing" in r.stdout


def test_hub_errors_are_clear(online: dict[str, str], tiny_repo: dict[str, list[Path]]) -> None:
    write_tiny_profile("runq/Nope-GGUF", tiny_repo, name="nope")
    r = runq_proc("pull", "nope", "--quant", "F16")
    assert r.returncode == 1 and "Error: runq/Nope-GGUF was not found on http://127.0.0.1" in r.stderr
    write_tiny_profile("runq/Gated-GGUF", tiny_repo, name="gated")
    r = runq_proc("pull", "gated", "--quant", "F16")
    assert r.returncode == 1 and "Error: runq/Gated-GGUF is gated" in r.stderr and "HF_TOKEN" in r.stderr
    r = runq_proc("pull", "gated", "--quant", "F16", env={**online, "HF_TOKEN": "hf_test"})
    assert r.returncode == 0, r.stderr
    offline = {**online, "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there
    r = runq_proc("pull", "nope", "--quant", "F16", env=offline)
    assert r.returncode == 1 and "cannot reach http://127.0.0.1:9" in r.stderr


def test_bad_user_profile_names_the_file(tmp_path: Path) -> None:
    d = Path(os.environ["RUNQ_HOME"]) / "config" / "profiles"
    d.mkdir(parents=True)
    (d / "broken.toml").write_text('name = "broken"\n')
    r = runq_proc("models")  # reported and left out: a broken profile of yours does not block runq
    assert r.returncode == 0 and "deepseek-v3.1" in r.stdout
    assert f"Warning: left out your profile {d / 'broken.toml'}: display_name: Field required" in r.stderr
    assert parse_profile  # the same validation as packaged profiles


def test_auto_from_nothing_to_a_verified_server(
    online: dict[str, str], tiny_repo: dict[str, list[Path]], server: HubServer, llama_build: Build
) -> None:
    """`runq tiny --auto --yes --server`: plan from remote headers, download, find the build, serve, verify."""
    import signal
    import urllib.request

    from launcher.llama.server import free_port

    write_tiny_profile("runq/Tiny-GGUF", tiny_repo)
    port = free_port()
    env = {**online, "RUNQ_CACHE_DIR": str(session_cache(llama_build))}
    r = RunningRunq(["tiny", "--auto", "--yes", "--server", "--port", str(port), "--quant", "UD-Q8_0"], env)
    try:
        r.wait_for("Serving.", timeout=180)
        out = "".join(r.out)
        assert "Ready: " in out and "llama-server is ready at" in out
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as h:
            assert json.loads(h.read())["status"] == "ok"
        r.proc.send_signal(signal.SIGINT)
        code, _, _ = r.finish()
        assert code == 130
    finally:
        if r.proc.poll() is None:
            r.proc.kill()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def until(pilot: Pilot[object], done: Callable[[], bool], timeout: float = 120) -> None:
    """Let the app run until done() (a task screen has reported back): slow on a loaded machine, never wrong."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        await pilot.pause(0.05)


@pytest.mark.anyio
async def test_tui_download_and_build_tasks(
    online: dict[str, str], tiny_repo: dict[str, list[Path]], server: HubServer, llama_build: Build,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The TUI's download and build actions run in workers and report back (same code as `runq pull/build`)."""
    from launcher.tui.app import RunqApp
    from launcher.tui.task_screen import BuildTask, DownloadTask

    write_tiny_profile("runq/Tiny-GGUF", tiny_repo)
    monkeypatch.setenv("RUNQ_CACHE_DIR", str(session_cache(llama_build)))
    machine = MachineSpec.model_validate({"ram": "16GiB", "cores": 2}).to_machine()
    app = RunqApp(machine)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        done: list[bool | None] = []
        app.push_screen(DownloadTask("tiny", "UD-Q8_0"), done.append)
        await until(pilot, lambda: bool(done))
        assert done == [True], (type(app.screen).__name__, [str(n.message) for n in app._notifications])
        assert {r.path for r in server.log if r.bytes_sent} == {f"UD-Q8_0/{p.name}" for p in tiny_repo["UD-Q8_0"]}
        app.push_screen(BuildTask(), done.append)  # cached: finds the build at once
        await until(pilot, lambda: len(done) == 2)
        assert done == [True, True], [str(n.message) for n in app._notifications]


@pytest.mark.anyio
async def test_tui_download_is_the_same_pull_verification_included(
    online: dict[str, str], tiny_repo: dict[str, list[Path]], server: HubServer, tmp_path: Path
) -> None:
    """The TUI's download goes through pull.pull: a set whose bytes arrive intact (sizes and sha256 match what
    the Hub says) but do not form a model is caught by the same header verification as `runq pull`."""
    from textual.widgets import Static

    from launcher.tui.app import RunqApp
    from launcher.tui.dialogs import ErrorDialog
    from launcher.tui.task_screen import DownloadTask

    damaged = tmp_path / "damaged"
    files: dict[str, Path] = {}
    for p in tiny_repo["UD-Q8_0"]:
        copy = damaged / "UD-Q8_0" / p.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        data = bytearray(p.read_bytes())
        if p.name.endswith("-00002-of-00003.gguf"):
            data[0:4] = b"FUGG"  # same size, same sha256 on the "Hub": only reading the header can tell
        copy.write_bytes(bytes(data))
        files[f"UD-Q8_0/{p.name}"] = copy
    files["Tiny-F16.gguf"] = tiny_repo["F16"][0]
    server.repos["runq/Damaged-GGUF"] = Repo(files)
    write_tiny_profile("runq/Damaged-GGUF", tiny_repo, name="damaged")
    app = RunqApp(MachineSpec.model_validate({"ram": "16GiB", "cores": 2}).to_machine())
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        done: list[bool | None] = []
        app.push_screen(DownloadTask("damaged", "UD-Q8_0"), done.append)
        await until(pilot, lambda: bool(done))
        assert done == [False]
        assert isinstance(app.screen, ErrorDialog)
        message = str(app.screen.query_one("#error-message", Static).render())
        assert "downloaded, but the files do not form a valid model" in message and "not a GGUF file" in message


@pytest.mark.anyio
async def test_tui_download_checks_the_disk_first(
    online: dict[str, str], deepseek_repo: dict[str, list[Path]], server: HubServer
) -> None:
    """The TUI's download is `runq pull`'s: a quant larger than the free disk is refused before a byte moves."""
    from textual.widgets import Static

    from launcher.machine.probe import free_disk_bytes
    from launcher.paths import hf_cache_dir
    from launcher.tui.app import RunqApp
    from launcher.tui.dialogs import ErrorDialog
    from launcher.tui.task_screen import DownloadTask

    size = sum(p.stat().st_size for p in deepseek_repo["UD-Q2_K_XL"])  # ~250 GB, sparse on the Hub's side
    hf_cache_dir().mkdir(parents=True, exist_ok=True)
    free = free_disk_bytes(hf_cache_dir())
    if free is None or free > size:
        pytest.skip(f"this disk has room for {size / 1e9:.0f} GB: the refusal cannot be shown here")
    app = RunqApp(MachineSpec.model_validate({"ram": "16GiB", "cores": 2}).to_machine())
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        done: list[bool | None] = []
        app.push_screen(DownloadTask("deepseek-v3.1", "UD-Q2_K_XL"), done.append)
        await until(pilot, lambda: bool(done))
        assert done == [False] and isinstance(app.screen, ErrorDialog)
        assert "not enough disk space" in str(app.screen.query_one("#error-message", Static).render())
    assert not [r for r in server.log if r.bytes_sent and r.path.endswith(".gguf") and not r.range]


# --- sizes from llama.cpp on a replica of the cached headers (issue 13) ------------------------------------


def test_hub_quant_is_projected_on_a_replica_of_its_cached_headers(
    online: dict[str, str], deepseek_repo: dict[str, list[Path]], llama_build: Build
) -> None:
    argv = ["plan", "deepseek-v3.1", "--quant", "UD-Q2_K_XL", "--ctx", "32768", "--gpu", "24GiB", "--ram", "512GiB"]
    r = runq_proc(*argv, "--json", "--llama-bin", str(llama_build.bin_dir))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["exact"] is True and "llama.cpp projection, build 0c1e570" in data["sizes"]
    gpu, cpu = data["devices"]
    assert gpu["kv_bytes"] + cpu["kv_bytes"] == 2196 * 2**20  # DeepSeek-V3.1 at 32k, as llama.cpp projects it
    replicas = list(Path(os.environ["RUNQ_HOME"]).glob("**/hub/unsloth--DeepSeek-V3.1-GGUF/replicas/*"))
    assert len(replicas) == 1
    shards = sorted(replicas[0].iterdir())
    assert [p.name for p in shards] == [p.name for p in deepseek_repo["UD-Q2_K_XL"]]
    assert [p.stat().st_size for p in shards] == [p.stat().st_size for p in deepseek_repo["UD-Q2_K_XL"]]
    from launcher.hub.replica import disk_bytes

    assert disk_bytes(replicas[0]) < 64 * 2**20  # 255 GB apparent
