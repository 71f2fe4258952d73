"""Names: typos get suggestions; any Unsloth-style repo outside the catalog plans from its own listing and headers.

Against the local Hub (tests/hubserver.py) through the real huggingface_hub client.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.measure.synth import SynthSpec, write_model
from launcher.model.shards import open_local
from tests.helpers import runq_proc
from tests.support.hubserver import HubServer, Repo

REPO = "runq/Outside-GGUF"  # not in the catalog
SPEC = SynthSpec(
    arch="qwen3moe",
    n_layer=4,
    n_embd=256,
    n_ff_exp=256,
    n_expert=8,
    name="Outside MoE",
    extra_kv=(("general.sampling.temp", 0.7), ("general.sampling.top_k", 20)),
)


HUB_PAGE_SIZE = 2  # the repo tree in pages of two entries (tests/edge/conftest.py)


@pytest.fixture(scope="module")
def outside_repo(server: HubServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    d = tmp_path_factory.mktemp("outside-repo")
    q8 = write_model(SPEC, d / "Q8_0" / "Outside-Q8_0.gguf", shards=2).paths
    f16 = write_model(SPEC.with_(weight_type="F16"), d / "Outside-F16.gguf").paths
    files = {f"Q8_0/{p.name}": p for p in q8} | {"Outside-F16.gguf": f16[0]}
    server.repos[REPO] = Repo(files)
    return {"Q8_0": list(q8), "F16": list(f16)}


def test_a_repo_outside_the_catalog_plans_exactly_from_its_headers(
    online: dict[str, str],
    outside_repo: dict[str, list[Path]],
) -> None:
    r = runq_proc("plan", REPO, "--gpu", "24GiB", "--ram", "64GiB", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["exact"] is True and data["sizes"].startswith("exact: 2 of 2 quants")
    sizes = {q: sum(p.stat().st_size for p in ps) for q, ps in outside_repo.items()}
    got = {c["quant"]: c for c in data["candidates"]}
    assert set(got) == {"Q8_0", "F16"}
    local = open_local(outside_repo["F16"][0])
    assert data["quant"] == "F16"  # the larger one fits
    assert data["model"] == "Outside MoE"  # general.name from the header
    assert sum(d["weights_bytes"] for d in data["devices"]) == local.tensors.total_bytes
    # No profile: the GGUF's own sampling defaults are used, and said to come from the GGUF.
    by_name = {v["name"]: v for v in data["sampling"]}
    assert by_name["temperature"] == {"name": "temperature", "value": pytest.approx(0.7), "source": "GGUF"}
    assert by_name["top_k"]["source"] == "GGUF" and by_name["min_p"]["source"] == "llama.cpp default"
    argv = data["argv"]
    assert argv[argv.index("--temp") + 1] == "0.7" and argv[argv.index("--top-k") + 1] == "20"
    assert "--min-p" not in argv  # llama.cpp's own default is left alone
    assert sizes["F16"] == next(c for c in data["candidates"] if c["quant"] == "F16")["size_bytes"]


def test_pull_works_for_a_repo_outside_the_catalog(
    online: dict[str, str],
    outside_repo: dict[str, list[Path]],
    server: HubServer,
) -> None:
    r = runq_proc("pull", REPO, "--quant", "Q8_0")
    assert r.returncode == 0, r.stderr
    assert "2 file(s)" in r.stdout and "Ready: " in r.stdout
    downloaded = {x.path for x in server.log if x.method == "GET" and x.bytes_sent and not x.range}
    assert downloaded == {f"Q8_0/{p.name}" for p in outside_repo["Q8_0"]}


def test_a_repo_without_gguf_files_or_a_missing_repo_is_a_clear_error(
    online: dict[str, str],
    server: HubServer,
    tmp_path: Path,
) -> None:
    (tmp_path / "README.md").write_text("no weights\n")
    server.repos["runq/Empty"] = Repo({"README.md": tmp_path / "README.md"})
    r = runq_proc("plan", "runq/Empty", "--gpu", "24GiB", "--ram", "64GiB")
    assert r.returncode != 0 and "has no GGUF files" in r.stderr and "Traceback" not in r.stderr
    r = runq_proc("plan", "runq/Does-Not-Exist-GGUF", "--gpu", "24GiB", "--ram", "64GiB")
    assert r.returncode != 0 and "Error:" in r.stderr and "Traceback" not in r.stderr


def test_a_typo_gets_a_suggestion() -> None:
    r = runq_proc("plan", "deepseek-v31", "--gpu", "24GiB", "--ram", "256GiB")
    assert r.returncode == 2
    assert "did you mean deepseek-v3.1" in r.stderr and "Traceback" not in r.stderr
    r = runq_proc("plan", "gpt-oss-12b", "--estimate", "--gpu", "24GiB", "--ram", "64GiB")
    assert r.returncode == 2 and "did you mean gpt-oss-120b" in r.stderr
    r = runq_proc("plan", "kimi", "--estimate", "--gpu", "80GiB", "--ram", "512GiB", "--json")  # an alias
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"] == "Kimi-K2.5"
