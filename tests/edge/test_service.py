"""`runq service`: golden units, systemd's own checks, the unit's command really serving, install/status/remove."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.llama.build import Build
from launcher.llama.server import free_port, http_json
from launcher.measure.synth import SynthModel, SynthSpec, write_model
from launcher.service.unit import UnitSpec, render

GOLDEN = Path(__file__).resolve().parents[1] / "support" / "golden"
FAKE_SYSTEMCTL = Path(__file__).resolve().parents[1] / "support" / "fake_systemctl.py"
RUNQ = ["/opt/runq/.venv/bin/python3", "-m", "launcher"]
COMBOS = [(mode, gpu, lan) for mode in ("user", "system") for gpu in (True, False) for lan in (False, True)]


def golden_spec(mode: str, gpu: bool, lan: bool, binary: str = "", runq: list[str] | None = None) -> UnitSpec:
    binary = binary or f"/opt/runq/cache/builds/0c1e57098b-{'cuda-sm89' if gpu else 'cpu'}-0a1b2c3d/bin/llama-server"
    model = ("/home/alice/.cache/huggingface/hub/models--unsloth--DeepSeek-V3.1-GGUF/snapshots/abc/" if mode == "user"
             else "/srv/models/") + "UD-Q2_K_XL/DeepSeek-V3.1-UD-Q2_K_XL-00001-of-00006.gguf"  # fmt: skip
    state = "/home/alice/.local/state" if mode == "user" else "/var/lib"
    argv = [binary, "-m", model, "-c", "16384", "-ngl", "62" if gpu else "0", "--fit", "off"]
    if gpu:
        argv += ["-ot", r"\.ffn_(?:down|gate|up)_exps\.=CPU", "-lm", "none"]
    argv += ["-ub", "512", "-b", "2048", "-t", "16", "-cram", "8192", "--temp", "0.6", "--jinja"]
    argv += [
        "--host",
        "0.0.0.0" if lan else "127.0.0.1",
        "--port",
        "8080",
        "--log-file",
        f"{state}/runq/ds/llama-server.log",
    ]
    if lan:
        argv += ["--api-key-file", "/etc/runq/ds.key"]
    return UnitSpec(
        name="ds",
        description="runq: DeepSeek-V3.1 UD-Q2_K_XL",
        exec_start=argv,
        runq=runq or RUNQ,
        mode=mode,  # type: ignore[arg-type]
        run_as="llama" if mode == "system" else None,
        gpus=((0, 22 * 2**30),) if gpu else (),
        state_dir="runq/ds",
        read_paths=(binary, model),
        write_paths=(f"{state}/runq/ds",) if mode == "user" else (),
    )


def golden_name(mode: str, gpu: bool, lan: bool) -> str:
    return f"{mode}-{'gpu' if gpu else 'cpu'}-{'lan' if lan else 'loopback'}.service"


@pytest.mark.parametrize(("mode", "gpu", "lan"), COMBOS)
def test_golden_units(mode: str, gpu: bool, lan: bool) -> None:
    text = render(golden_spec(mode, gpu, lan))
    path = GOLDEN / golden_name(mode, gpu, lan)
    if os.environ.get("RUNQ_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def _write_real_unit(tmp_path: Path, mode: str, gpu: bool, lan: bool, build: Build) -> Path:
    spec = golden_spec(
        mode, gpu, lan, binary=str(build.binary("llama-server")), runq=[sys.executable, "-m", "launcher"]
    )
    if mode == "system":
        spec = UnitSpec(**{**spec.__dict__, "run_as": "daemon"})
    p = tmp_path / f"runq-{mode}-{int(gpu)}-{int(lan)}.service"
    p.write_text(render(spec))
    return p


needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")


@needs_systemd_analyze
@pytest.mark.parametrize(("mode", "gpu", "lan"), COMBOS)
def test_systemd_verify_and_security(mode: str, gpu: bool, lan: bool, llama_build: Build, tmp_path: Path) -> None:
    check_unit(_write_real_unit(tmp_path, mode, gpu, lan, llama_build), mode, tmp_path)


def check_unit(unit: Path, mode: str, tmp_path: Path) -> None:
    """systemd's own checks of a unit file: `verify` without complaints, and an exposure level of at most 6.9
    ("MEDIUM" or better) in `security --offline=yes`."""
    scope = ["--user"] if mode == "user" else []
    runtime = tmp_path / "runtime"  # a user manager needs a runtime directory, even to verify files
    runtime.mkdir(mode=0o700, exist_ok=True)
    r = subprocess.run(["systemd-analyze", *scope, "verify", str(unit)], capture_output=True, text=True,
                       env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Unknown" not in r.stderr and "ignoring" not in r.stderr.lower(), r.stderr
    s = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", s.stdout + s.stderr)
    assert m, s.stdout + s.stderr
    assert float(m.group(1)) <= 6.9, s.stdout[-3000:]


@pytest.fixture
def env(llama_build: Build, tmp_path: Path) -> Iterator[dict[str, str]]:
    fake = tmp_path / "fake-systemd"
    yield {
        **os.environ,
        "RUNQ_CACHE_DIR": str(llama_build.path.parent.parent),
        "RUNQ_SYSTEMCTL": str(FAKE_SYSTEMCTL),
        "RUNQ_JOURNALCTL": "/bin/echo",
        "RUNQ_UNIT_DIR": str(tmp_path / "units"),
        "RUNQ_STATE_DIR": str(tmp_path / "state"),
        "FAKE_SYSTEMD_DIR": str(fake),
    }
    # The stand-in systemctl starts units as daemons (as systemd would): stop what a failed test left running.
    for pid_file in fake.glob("*.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> SynthModel:
    return write_model(
        SynthSpec(n_layer=4, n_embd=256, n_ff=256, n_ff_exp=256), tmp_path_factory.mktemp("svc") / "m.gguf"
    )


def runq(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher", *argv], capture_output=True, text=True, env=env, timeout=300
    )


def test_exec_start_of_a_rendered_unit_serves(model: SynthModel, env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    r = runq(env, "service", "render", str(model.path), "--port", str(port), "--name", "direct")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("# Generated by runq")  # exactly the unit, nothing else; the model is under /tmp:
    assert r.stderr.startswith(f"Warning: the service reads {model.path} from a temporary directory") and (
        r.stderr.count("Warning:") == 1
    )
    line = next(x for x in r.stdout.splitlines() if x.startswith("ExecStart="))
    argv = [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line.removeprefix("ExecStart="))]
    assert Path(argv[0]).is_absolute() and Path(argv[argv.index("-m") + 1]).is_absolute()
    (tmp_path / "state" / "runq" / "direct").mkdir(parents=True)  # what StateDirectory= makes
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        import time

        for _ in range(300):
            try:
                if http_json(url, "/health", timeout=2).get("status") == "ok":
                    break
            except OSError:
                time.sleep(0.1)
        answer = http_json(url, "/v1/chat/completions", body={"messages": [{"role": "user", "content": "hi"}],
                                                              "max_tokens": 4})  # fmt: skip
        assert answer["choices"][0]["message"]["role"] == "assistant"
    finally:
        proc.terminate()
        proc.wait()


def calls(env: dict[str, str]) -> list[list[str]]:
    p = Path(env["FAKE_SYSTEMD_DIR"]) / "calls.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def test_install_status_list_remove(model: SynthModel, env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    r = runq(env, "service", "install", str(model.path), "--name", "tiny", "--port", str(port), "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Running: http://127.0.0.1:{port}" in r.stdout and "loginctl enable-linger" in r.stdout
    unit = tmp_path / "units" / "runq-tiny.service"
    record = Path(env.get("RUNQ_HOME", "")) / "config" / "services" / "tiny.json"
    assert unit.is_file() and record.is_file()
    assert calls(env) == [["--user", "show-environment"], ["--user", "daemon-reload"],
                          ["--user", "enable", "--now", "runq-tiny.service"]]  # fmt: skip
    saved = json.loads(record.read_text())
    assert saved["port"] == port and saved["argv"][0].endswith("llama-server") and saved["plan"]["ctx"] > 0
    # The unit's ExecStartPost (runq service verify) ran against the real server and passed.
    r = runq(env, "service", "status", "tiny")
    assert r.returncode == 0, r.stderr
    assert "runq-tiny.service: active (running)" in r.stdout and "health: ok" in r.stdout
    # predicted and reported memory, the same table as `runq run` prints (device, column, predicted, llama.cpp)
    assert re.search(r"CPU\s+weights\s+\S+ \S+\s+\S+ \S+\s+[+-]\d", r.stdout), r.stdout
    r = runq(env, "service", "list")
    assert re.search(rf"tiny\s+active\s+{re.escape(str(model.path))}", r.stdout)
    r = runq(env, "service", "logs", "tiny")
    assert r.returncode == 0 and "--user-unit runq-tiny.service" in r.stdout
    r = runq(env, "service", "restart", "tiny")  # the fake really restarts it, and ExecStartPost verifies again
    assert r.returncode == 0 and "Restarted runq-tiny.service." in r.stdout
    assert calls(env)[-1] == ["--user", "restart", "runq-tiny.service"]
    assert http_json(f"http://127.0.0.1:{port}", "/health", timeout=5)["status"] == "ok"
    # Installing the same again changes nothing; another port for the same name needs --force.
    r = runq(env, "service", "install", str(model.path), "--name", "tiny", "--port", str(port), "--yes")
    assert r.returncode == 0, r.stderr
    r = runq(env, "service", "install", str(model.path), "--name", "tiny", "--port", str(free_port()), "--yes")
    assert r.returncode == 1 and "exists with a different plan" in r.stderr and "--force" in r.stderr
    r = runq(env, "service", "remove", "tiny")
    assert r.returncode == 0 and "The model files and the llama.cpp build are kept." in r.stdout
    assert not unit.exists() and not record.exists() and model.path.exists()
    assert calls(env)[-3:] == [["--user", "stop", "runq-tiny.service"], ["--user", "disable", "runq-tiny.service"],
                               ["--user", "daemon-reload"]]  # fmt: skip
    with pytest.raises(OSError):  # stopped: nothing answers any more
        http_json(f"http://127.0.0.1:{port}", "/health", timeout=2)


def test_bad_input_writes_nothing(model: SynthModel, env: dict[str, str], tmp_path: Path) -> None:
    units = tmp_path / "units"
    r = runq(env, "service", "install", "llama-9", "--yes")
    assert r.returncode == 2 and "no model called 'llama-9'" in r.stderr
    r = runq(env, "service", "install", str(model.path), "--host", "0.0.0.0", "--yes")
    assert r.returncode == 2 and "--api-key-file" in r.stderr
    key = tmp_path / "key"
    key.write_text("secret\n")
    key.chmod(0o644)
    r = runq(env, "service", "install", str(model.path), "--host", "0.0.0.0", "--api-key-file", str(key), "--yes")
    assert r.returncode == 2 and "can be read by other users" in r.stderr and "chmod 600" in r.stderr
    units.mkdir()
    (units / "runq-mine.service").write_text("[Service]\nExecStart=/bin/true\n")
    r = runq(env, "service", "install", str(model.path), "--name", "mine", "--yes", "--force")
    assert r.returncode == 1 and "was not written by runq" in r.stderr
    assert (units / "runq-mine.service").read_text() == "[Service]\nExecStart=/bin/true\n"
    assert not (Path(env["RUNQ_HOME"]) / "config" / "services" / "mine.json").exists()
    r = runq(env, "service", "install", str(model.path), "--system", "--run-as", "root", "--yes")
    assert r.returncode == 2 and "would run as root" in r.stderr
    r = runq(env, "service", "status", "nope")
    assert r.returncode == 2 and "no runq service 'nope'" in r.stderr
    assert calls(env) == []


def test_port_taken_by_another_runq_service(model: SynthModel, env: dict[str, str]) -> None:
    d = Path(env["RUNQ_HOME"]) / "config" / "services"
    d.mkdir(parents=True)
    (d / "other.json").write_text(json.dumps({"name": "other", "mode": "user", "model": "x", "quant": "q",
                                              "host": "127.0.0.1", "port": 8099, "argv": [], "log_path": "/x",
                                              "gpus": [], "plan": {}}))  # fmt: skip
    r = runq(env, "service", "install", str(model.path), "--port", "8099", "--yes")
    assert r.returncode == 2 and "port 8099 is already used by the runq service 'other'" in r.stderr


def test_dry_run_prints_unit_and_plan(model: SynthModel, env: dict[str, str], tmp_path: Path) -> None:
    r = runq(env, "service", "install", str(model.path), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "[Service]" in r.stdout and "the plan it runs" in r.stdout
    assert not (tmp_path / "units").exists() and calls(env) == []


def test_render_warns_when_a_gpu_plan_meets_a_cpu_build(model: SynthModel, env: dict[str, str]) -> None:
    """A unit that would put layers on a GPU, rendered against a CPU-only build: the unit is printed (stdout stays
    exactly the unit) and stderr says the service would run everything on the CPU."""
    r = runq(env, "service", "render", str(model.path), "--gpu", "24GiB", "--ram", "16GiB", "--cores", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("# Generated by runq")
    assert "Warning: the plan puts layers on the GPU but" in r.stderr and "is a cpu build of llama.cpp" in r.stderr
    cpu = runq(env, "service", "render", str(model.path), "--gpu", "none", "--ram", "16GiB", "--cores", "2")
    assert cpu.returncode == 0 and "the plan puts layers on the GPU" not in cpu.stderr, cpu.stderr
    assert cpu.stderr.count("Warning:") == 1 and "PrivateTmp=yes" in cpu.stderr  # only that the model is in /tmp


def test_what_the_service_reads_from_tmp_is_bound_in_and_said(
    model: SynthModel, env: dict[str, str], tmp_path: Path
) -> None:
    """PrivateTmp=yes gives the service an empty /tmp of its own: a model (every shard), a build, a template or a
    key file under /tmp is bound in read-only, and render and --dry-run say why and that it will not survive a
    reboot. Paths elsewhere are left alone."""
    shards = write_model(SynthSpec(n_layer=4), tmp_path / "split" / "m.gguf", shards=2).paths
    assert str(shards[0]).startswith("/tmp/")
    for argv in (["service", "render", str(shards[0])], ["service", "install", str(shards[0]), "--dry-run"]):
        r = runq(env, *argv)
        assert r.returncode == 0, r.stderr
        binds = [x.removeprefix("BindReadOnlyPaths=") for x in r.stdout.splitlines() if x.startswith("BindReadOnly")]
        assert binds == [str(p) for p in shards], binds  # the build, template and runq are not under /tmp here
        assert "Warning: the service reads" in r.stderr and "PrivateTmp=yes" in r.stderr
        assert "after a reboot the service will not start" in r.stderr and "Move it out of /tmp" in r.stderr
    build = env["RUNQ_CACHE_DIR"]
    assert not build.startswith("/tmp/") and f"BindReadOnlyPaths={build}" not in r.stdout


def test_private_tmp_paths_and_their_unit_syntax() -> None:
    from launcher.service.unit import private_tmp_paths

    paths = ["/tmp/a/bin/llama-server", "/tmp/a/bin", "/tmp/a/bin/", "/var/tmp/m.gguf", "/home/x/m.gguf",
             "/tmpfoo/m.gguf", "/tmp/a:b c%/m.gguf"]  # fmt: skip
    assert private_tmp_paths(paths) == ("/tmp/a/bin", "/var/tmp/m.gguf", "/tmp/a:b c%/m.gguf")
    spec = golden_spec("user", False, False)
    text = render(UnitSpec(**{**spec.__dict__, "binds": private_tmp_paths(paths)}))
    lines = [x for x in text.splitlines() if x.startswith("BindReadOnlyPaths=")]
    assert lines == ["BindReadOnlyPaths=/tmp/a/bin", "BindReadOnlyPaths=/var/tmp/m.gguf",
                     'BindReadOnlyPaths="/tmp/a\\:b c%%/m.gguf"']  # fmt: skip
    assert text.index("PrivateTmp=yes") < text.index("BindReadOnlyPaths=")


@needs_systemd_analyze
def test_a_unit_with_binds_passes_systemd_checks(llama_build: Build, tmp_path: Path) -> None:
    spec = golden_spec("user", False, False, binary=str(llama_build.binary("llama-server")),
                       runq=[sys.executable, "-m", "launcher"])  # fmt: skip
    unit = tmp_path / "runq-binds.service"
    unit.write_text(render(UnitSpec(**{**spec.__dict__, "binds": ("/tmp/x/m.gguf", "/tmp/a:b c/m.gguf")})))
    check_unit(unit, "user", tmp_path)


@needs_systemd_analyze
def test_router_unit_dry_run_passes_systemds_checks(env: dict[str, str], tmp_path: Path) -> None:
    """`runq service install --all --dry-run`: every model on disk in one router unit, which systemd-analyze
    accepts; the preset beside it names each model's file (tests/e2e/test_systemd_real.py starts it for real)."""
    hub = Path(os.environ["HF_HUB_CACHE"])
    spec = SynthSpec(n_layer=4, n_embd=256, n_ff=256, n_ff_exp=256)
    for repo, name in (("models--t--a-GGUF", "a-Q8_0.gguf"), ("models--t--b-GGUF", "b-Q8_0.gguf")):
        write_model(spec, hub / repo / "snapshots" / "r1" / name)
    r = runq(env, "service", "install", "--all", "--dry-run", "--ctx", "2048", "--port", "8123")
    assert r.returncode == 0, r.stderr
    unit_text, preset = re.split(r"\n\n# \S+router\.ini: ", r.stdout)  # the unit (after its path), the preset
    assert "--models-preset" in unit_text and "--models-max 1 --host 127.0.0.1 --port 8123" in unit_text
    assert "Environment=LLAMA_CACHE=" in unit_text and "PrivateUsers=yes" in unit_text
    assert "ExecStartPost=" in unit_text and "service verify router --user" in unit_text
    assert "[a-Q8_0]\nm = " in preset and "[b-Q8_0]\nm = " in preset
    unit = tmp_path / "runq-router.service"
    unit.write_text(unit_text.split("\n", 1)[1])
    check_unit(unit, "user", tmp_path)
    r = runq(env, "service", "install", "some-model", "--all", "--dry-run")
    assert r.returncode == 2 and "--all serves every complete model on disk" in r.stderr
    r = runq(env, "service", "install", "--dry-run")
    assert r.returncode == 2 and "--all for every model on disk" in r.stderr
