"""Every bad input is a clean error, whichever command it came through: the README's exit code, an `Error:` line
(with a `Hint:` where there is something to do), never a traceback and never a silently changed value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from launcher.cli.main import main
from launcher.errors import ServerFailed, UsageError
from launcher.measure.synth import SynthModel
from launcher.plan.inputs import PlanInputs, ServerOptions, gpu_buffers, planning_request, split_extra

M = "{model}"  # replaced by a generated model's path
MACHINE = ["--gpu", "24GiB", "--ram", "64GiB", "--cores", "8"]
LONG = "x" * 5000

BAD: list[tuple[list[str], int, str]] = [
    # plan
    (["plan", M, "-ctk", "q3"], 2, "--cache-type-k 'q3' is not a KV cache type"),
    (["plan", M, "-ctv", "q9"], 2, "--cache-type-v 'q9' is not a KV cache type"),
    (["plan", M, "--ctx", "0"], 2, "--ctx 0: too small"),
    (["plan", M, "--ctx", "-5"], 2, "--ctx -5: too small"),
    (["plan", M, "--ctx", "100000000000"], 2, "--ctx 100000000000: must be between"),
    (["plan", M, "--ctx", "lots"], 2, "'lots' is not a number of tokens: e.g. 32768, or 32k"),
    (["plan", M, "--ctx", "32kb"], 2, "'32kb' is not a number of tokens"),
    (["plan", M, "--ram", "0GiB"], 2, "--ram '0GiB': RAM must be more than zero"),  # as --gpu 0GiB, not "too big"
    (["plan", M, "--ram", "-1GiB"], 2, "--ram '-1GiB': a size cannot be negative"),
    (["plan", M, "--gpu", "-5GiB"], 2, "GPU memory '-5GiB': a size cannot be negative"),  # not "expected one arg"
    (["plan", "nothere.gguf"], 2, "nothere.gguf: no such file"),
    (["inspect", "nothere.gguf"], 2, "nothere.gguf: no such file"),
    (["plan", M, "--ubatch", "0"], 2, "--ubatch 0: must be between 1"),
    (["plan", M, "--ubatch", "-7"], 2, "--ubatch -7: must be between 1"),
    (["plan", M, "--ngl", "-3"], 2, "--ngl -3: must be between 0"),
    (["plan", M, "--threads", "0"], 2, "--threads 0: must be between 1"),
    (["plan", M, "--threads", "-4"], 2, "--threads -4: must be between 1"),
    (["plan", M, "--ot", r"blk\.3\.=CUDA9"], 2, "this machine has no buffer 'CUDA9'"),
    (["plan", M, "--ot", r"blk\.3\.=GPU"], 2, "this machine has no buffer 'GPU'"),
    (["plan", M, "--ot", "nobuffer"], 2, "expected PATTERN=BUFFER"),
    (["plan", M, "--ot", "blk.(=CPU"], 2, "the pattern is not a valid regex"),
    (["plan", M, "--gpu", "24GiB", "--gpu", "none"], 2, "'none' cannot be combined with GPU sizes"),
    (["plan", M, "--ram", "12"], 2, "has no unit"),
    (["plan", M, "--cores", "0"], 2, "--cores 0: must be between 1"),
    (["plan", LONG], 2, "a model name of 5,000 characters"),
    (["plan", "llama-9"], 2, "no model called 'llama-9'"),
    # run, with flags and with llama.cpp's flags after --
    (["run", M, "--dry-run", "-ctk", "q3"], 2, "--cache-type-k 'q3' is not a KV cache type"),
    (["run", M, "--dry-run", "--ctx", "0"], 2, "--ctx 0: too small"),
    (["run", M, "--dry-run", "--ubatch", "-7"], 2, "--ubatch -7"),
    (["run", M, "--dry-run", "--threads", "0"], 2, "--threads 0"),
    (["run", M, "--dry-run", "--", "-ctk", "q3"], 2, "-ctk (after --) 'q3' is not a KV cache type"),
    (["run", M, "--dry-run", "--", "-c", "0"], 2, "-c (after --) 0: too small"),
    (["run", M, "--dry-run", "--", "-ub", "0"], 2, "-ub (after --) 0"),
    (["run", M, "--dry-run", "--", "-ngl", "-3"], 2, "-ngl (after --) -3"),
    (["run", M, "--dry-run", "--", "-t", "-4"], 2, "-t (after --) -4"),
    (["run", M, "--dry-run", "--", "-ot", "x=CUDA3"], 2, "no buffer 'CUDA3'"),
    (["run", M, "--dry-run", "--", "-c", "lots"], 2, "-c 'lots': expected a whole number"),
    (["run", M, "--dry-run", "--", "-ngl", "all"], 2, "-ngl all: give a number"),
    (["run", M, "--dry-run", "--", "-c"], 2, "-c after -- needs a value"),
    (["run", M, "--dry-run", "--server", "--port", "99999"], 2, "--port 99999: must be between 1 and 65,535"),
    (["run", M, "--dry-run", "--server", "--port", "0"], 2, "--port 0: must be between 1"),
    (["run", M, "--dry-run", "--server", "--port", "-1"], 2, "--port -1"),
    (["run", M, "--dry-run", "--server", "--timeout", "-5"], 2, "--timeout -5: must be a number of seconds above 0"),
    (["run", M, "--dry-run", "--server", "--timeout", "nan"], 2, "--timeout nan"),
    # a chat has no server, but a bad server flag is still a bad value
    (["run", M, "--dry-run", "--port", "99999"], 2, "--port 99999: must be between 1 and 65,535"),
    (["run", M, "--dry-run", "--port", "-1"], 2, "--port -1: must be between 1"),
    (["run", M, "--dry-run", "--timeout", "-5"], 2, "--timeout -5: must be a number of seconds above 0"),
    # serve and clients
    (["serve", M, "--dry-run", "--port", "99999"], 2, "--port 99999"),
    (["serve", M, "--dry-run", "--models-max", "0"], 2, "--models-max 0: must be 1 or more"),
    (["serve", M, "--dry-run", "--host", "0.0.0.0"], 2, "would let anyone on the network use the model"),
    (["serve", M, "--dry-run", "--ctx", "0"], 2, "--ctx 0: too small"),
    (["clients", "--url", "ftp://x"], 2, "not an http:// address"),
    (["run", M, "--dry-run", "--server", "--host", "0.0.0.0"], 2, "would let anyone on the network use the model"),
    (["run", M, "--dry-run", "--server", "--host", ""], 2, "--host is empty"),
    (["run", M, "--dry-run", "--server", "--api-key-file", "/nonexistent/key"], 2, "cannot read --api-key-file"),
    (["run", M, "--dry-run", "--server", "--api-key", " "], 2, "--api-key is empty"),
    (["run", LONG], 2, "a model name of 5,000 characters"),
    (["plna", M], 2, "did you mean `runq plan`?"),
    (["frobnicate"], 2, "commands: hw, inspect, plan"),
    # service
    (["service", "render", M, "-ctk", "q3"], 2, "--cache-type-k 'q3' is not a KV cache type"),
    (["service", "render", M, "--ctx", "0"], 2, "--ctx 0: too small"),
    (["service", "render", M, "--threads", "-4"], 2, "--threads -4"),
    (["service", "render", M, "--port", "99999"], 2, "--port 99999"),
    (["service", "render", M, "--ngl", "-3"], 2, "--ngl -3"),
    (["service", "render", M, "--name", "../../etc/evil"], 2, "not a service name systemd accepts"),
    (["service", "render", M, "--name", "my model"], 2, "not a service name systemd accepts"),
    (["service", "render", M, "--name", "a/b"], 2, "not a service name systemd accepts"),
    (["service", "render", M, "--name", "x$(id)"], 2, "not a service name systemd accepts"),
    (["service", "render", M, "--name", ""], 2, "not a service name systemd accepts"),
    (["service", "render", M, "--run-as", "nobody"], 2, "--run-as applies to system units only"),
    (["service", "render", M, "--system", "--run-as", "nosuchuser-runq"], 2, "no such user"),
    (["service", "render", M, "--host", "0.0.0.0"], 2, "would let anyone on the network"),
    (["service", "render", M, "--", "-ctk", "q3"], 2, "flags after -- go to llama.cpp"),
    (["service", "status", "../../etc/evil"], 2, "not a service name systemd accepts"),
    # pull, build, models, demo, hw, tui
    (["pull", "deepseek-v3.1", "--ctx", "0"], 2, "--ctx 0: too small"),
    (["pull", "deepseek-v3.1", "--disk-free", "12"], 2, "has no unit"),
    (["pull", LONG], 2, "a model name of 5,000 characters"),
    (["pull", "nosuchmodel"], 2, "no model called 'nosuchmodel'"),
    (["build", "--clean", ""], 2, "--clean needs the key of a build, or --all"),
    (["build", "--clean"], 2, "--clean needs the key of a build, or --all"),
    (["build", "--clean", "0"], 2, "no cached build '0'"),
    (["build", "--clean", "x", "--all"], 2, "one or the other"),
    (["build", "--jobs", "0"], 2, "--jobs 0: must be at least 1"),
    (["build", "--source", "pypi", "--ref", "abc"], 2, "--ref applies to the git source only"),
    (["models", "--local", "--dir", "/nonexistent"], 2, "--dir /nonexistent: no such directory"),
    (["demo", "--port", "99999"], 2, "--port 99999"),
    (["demo", "--timeout", "0"], 2, "--timeout 0"),
    (["hw", "--ram", "lots"], 2, "cannot read --ram 'lots'"),
    (["inspect", LONG], 1, "a file name this long cannot exist here"),
    (["inspect", "/etc/passwd"], 1, "not a GGUF file"),
    (["hw", "--gpu", "0x24GiB"], 2, "0 GPUs is not a number runq can plan for"),
    (["tui", "--gpu", "24GiB", "--gpu", "none"], 2, "'none' cannot be combined with GPU sizes"),
]


def test_the_table_is_wide() -> None:
    assert len(BAD) >= 40
    assert {argv[0] for argv, _, _ in BAD} >= {"plan", "run", "service", "pull", "build", "models", "demo", "tui"}


@pytest.mark.parametrize(("argv", "code", "fragment"), BAD, ids=[" ".join(a)[:60] for a, _, _ in BAD])
def test_bad_input_is_a_clean_error(
    capsys: pytest.CaptureFixture[str], models: dict[str, SynthModel], argv: list[str], code: int, fragment: str
) -> None:
    path = str(models["deepseek2-q8"].path)
    argv = [path if a == M else a for a in argv]
    if argv[0] in ("plan", "run", "serve") or argv[:2] == ["service", "render"]:
        argv = _with_machine(argv)
    try:
        got = main(argv)
    except SystemExit as e:  # argparse's own errors
        got = int(e.code or 0)
    out, err = capsys.readouterr()
    assert got == code, (argv, out, err)
    first = err.splitlines()[0] if err else ""
    assert first.startswith("Error: "), err
    assert fragment in err, err
    assert "Traceback" not in err and "Traceback" not in out
    assert "\nHint: " in err, err  # every one of these says what to do


def _with_machine(argv: list[str]) -> list[str]:
    """The described machine's flags that the row does not give itself, before any `--`."""
    cut = argv.index("--") if "--" in argv else len(argv)
    more = [x for flag, value in zip(MACHINE[::2], MACHINE[1::2], strict=True) if flag not in argv
            for x in (flag, value)]  # fmt: skip
    return [*argv[:cut], *more, *argv[cut:]]


def test_server_flags_on_a_chat_are_said_to_do_nothing(
    capsys: pytest.CaptureFixture[str], models: dict[str, SynthModel]
) -> None:
    code = main(["run", str(models["deepseek2-q8"].path), "--dry-run", "--port", "9001", *MACHINE])
    err = capsys.readouterr().err
    assert code == 0 and "Warning: --port apply to a server only: add --server" in err


def test_world_readable_key_file_is_refused_by_run_like_service(
    capsys: pytest.CaptureFixture[str], models: dict[str, SynthModel], tmp_path: Path
) -> None:
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    key.chmod(0o644)
    path = str(models["deepseek2-q8"].path)
    for argv in (["run", path, "--dry-run", "--server"], ["service", "render", path]):
        code = main([*argv, "--host", "0.0.0.0", "--api-key-file", str(key), *MACHINE])
        err = capsys.readouterr().err
        assert code == 2 and "can be read by other users (mode 644)" in err and "Hint: chmod 600" in err
    key.chmod(0o600)
    code = main(["run", path, "--dry-run", "--server", "--host", "0.0.0.0", "--api-key-file", str(key), *MACHINE])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "--host 0.0.0.0" in out and f"--api-key-file {key}" in out and "s3cret" not in out


def test_request_checks_are_the_same_from_every_front_end() -> None:
    """The TUI builds a PlanInputs from its boxes; the CLI from flags and `--` pins: one check for both."""
    pins, rest = split_extra(["-ctk", "q8_0", "-c", "8192", "--no-warmup"])
    req = planning_request(PlanInputs(ctx=4096).pinned(pins), default_ctx=16384, buffers=gpu_buffers(2))
    assert (req.ctx, req.cache_type_k, req.cache_type_v) == (8192, "q8_0", "f16") and rest == ["--no-warmup"]
    assert planning_request(PlanInputs(), default_ctx=16384, buffers=("CPU",)).ctx == 16384
    with pytest.raises(UsageError, match="no buffer 'CUDA1'") as e:
        planning_request(PlanInputs(ot=("x=CUDA1",)), default_ctx=4096, buffers=gpu_buffers(1))
    assert e.value.hint == "the buffers it has: CPU, CUDA0"
    with pytest.raises(UsageError, match="would let anyone"):
        ServerOptions(host="192.168.1.5").check()
    assert ServerOptions(host="::1").check().host == "::1"  # loopback in IPv6 too
    assert ServerOptions(host="127.0.0.2").check().port == 8080


# Every flag runq sets itself, given again after `--` (llama.cpp takes the last of two): refused, naming runq's own
# flag; `_` in a long flag is `-` to llama.cpp, so it is to runq too.
OWNED_AFTER_DASHES: list[tuple[list[str], str]] = [
    (["--host", "0.0.0.0"], "use runq's own --host"),  # would serve every address with no key
    (["--host", "127.0.0.1"], "use runq's own --host"),  # harmless here, but one --host: the checked one
    (["--port", "9999"], "use runq's own --port N (runq waits"),  # runq would wait on the other port
    (["--api-key", "k"], "use runq's own --api-key-file"),
    (["--api_key", "k"], "use runq's own --api-key-file"),
    (["--api-key-file", "/k"], "use runq's own --api-key-file"),
    (["-m", "other.gguf"], "the model is runq's MODEL argument"),
    (["--model", "other.gguf"], "the model is runq's MODEL argument"),
    (["-hf", "org/repo"], "the model is runq's MODEL argument"),
    (["-mu", "http://x/m.gguf"], "the model is runq's MODEL argument"),
    (["-b", "4096"], "pin --ubatch N"),
    (["--batch_size", "4096"], "pin --ubatch N"),
    (["--fit", "on"], "runq places every tensor itself"),
    (["-fit", "on"], "runq places every tensor itself"),
    (["-fitt", "512"], "runq places every tensor itself"),
    (["-lm", "mmap"], "runq chooses the load mode"),
    (["--no-mmap"], "runq chooses the load mode"),
    (["-cram", "0"], "prompt cache"),
    (["-ts", "1,1"], "runq splits the layers between GPUs"),
    (["--rpc", "127.0.0.1:50052"], "use runq's own --rpc"),
    (["--jinja"], "chat template"),
    (["--chat-template-file", "t.jinja"], "chat template"),
]
# The plan pins after `--`, every spelling: checked like runq's own flag (a bad value is refused by name).
PINS_AFTER_DASHES: list[tuple[list[str], str]] = [
    (["--ctx-size", "0"], "-c (after --) 0: too small"),
    (["--ctx_size", "0"], "-c (after --) 0: too small"),
    (["--n-gpu-layers", "-3"], "-ngl (after --) -3"),
    (["--gpu-layers", "-3"], "-ngl (after --) -3"),
    (["--ubatch-size", "0"], "-ub (after --) 0"),
    (["--cache-type-v", "q9"], "-ctv (after --) 'q9' is not a KV cache type"),
    (["--threads", "0"], "-t (after --) 0"),
    (["--override-tensor", "x=CUDA3"], "no buffer 'CUDA3'"),
]


@pytest.mark.parametrize(("flags", "fragment"), OWNED_AFTER_DASHES + PINS_AFTER_DASHES,
                         ids=[" ".join(f) for f, _ in OWNED_AFTER_DASHES + PINS_AFTER_DASHES])  # fmt: skip
def test_flags_runq_sets_are_refused_or_checked_after_the_double_dash(
    capsys: pytest.CaptureFixture[str], models: dict[str, SynthModel], flags: list[str], fragment: str
) -> None:
    path = str(models["deepseek2-q8"].path)
    code = main(["run", path, "--dry-run", "--server", *MACHINE, "--", "--no-warmup", *flags])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("Error: ") and fragment in err and "Traceback" not in err + out
    assert "\nHint: " in err, err
    assert "would run" not in out


def test_pins_after_the_double_dash_are_carried_once(
    capsys: pytest.CaptureFixture[str], models: dict[str, SynthModel]
) -> None:
    """A good pin after `--` is planned around and the command carries it once (the checked value), under
    whichever spelling it was given; a flag runq does not set is passed through unchanged."""
    path = str(models["deepseek2-q8"].path)
    code = main(["run", path, "--dry-run", "--server", *MACHINE, "--", "--ctx_size", "8192", "--threads", "1",
                 "--no-warmup"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    cmd = next(line for line in out.splitlines() if "would run:" in line).split()
    assert cmd.count("-c") == 1 and cmd[cmd.index("-c") + 1] == "8192" and "--ctx_size" not in cmd
    assert cmd.count("-t") == 1 and cmd[cmd.index("-t") + 1] == "1" and "--threads" not in cmd
    assert cmd.count("--host") == 1 and cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[-1] == "--no-warmup"


def test_bind_failures_are_told_apart() -> None:
    import socket

    from launcher.llama.server import check_bind

    with pytest.raises(UsageError, match="cannot resolve it"):
        check_bind("no-such-host.invalid", 8080)
    with pytest.raises(UsageError, match="is not an address of this machine"):
        check_bind("192.0.2.1", 8080)  # TEST-NET-1: never configured on a real machine
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServerFailed, match=f"port {port} on 127.0.0.1 is already in use"):
            check_bind("127.0.0.1", port)
    if os.geteuid() != 0:
        with pytest.raises(UsageError, match="port 80 is privileged"):
            check_bind("127.0.0.1", 80)


def test_user_profiles_broken_or_replacing_are_said_and_do_not_block(
    capsys: pytest.CaptureFixture[str], models: dict[str, SynthModel]
) -> None:
    from launcher.catalog.profiles import profiles_dir

    d = Path(os.environ["RUNQ_HOME"]) / "config" / "profiles"
    d.mkdir(parents=True)
    (d / "latin1.toml").write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    (d / "broken.toml").write_text("[arch\n")
    (d / "mine.toml").write_text((profiles_dir() / "deepseek-v3.1.toml").read_text())
    code = main(["plan", str(models["deepseek2-q8"].path), *MACHINE])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"Warning: left out your profile {d / 'latin1.toml'}: it is not UTF-8 text" in err
    assert f"Warning: left out your profile {d / 'broken.toml'}: not valid TOML" in err
    assert f"Warning: your profile {d / 'mine.toml'} replaces runq's 'deepseek-v3.1'" in err
    assert main(["models"]) == 0
    assert "deepseek-v3.1" in capsys.readouterr().out


def test_service_help_lists_only_what_users_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["service", "--help"])
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("    ") and not line[4].isspace()]
    assert "SUPPRESS" not in out and "wait-gpu" not in out and "wait-workers" not in out
    assert listed == ["install", "install-worker", "render", "status", "restart", "remove", "logs", "list"], listed
    assert "install" in out and "render" in out


def test_a_described_machine_says_whose_cores_it_has(
    capsys: pytest.CaptureFixture[str], models: dict[str, SynthModel]
) -> None:
    """--gpu/--ram without --cores: the plan says it took this machine's cores; --cores says nothing."""
    import json

    path = str(models["deepseek2-q8"].path)
    assert main(["plan", path, "--gpu", "24GiB", "--ram", "64GiB"]) == 0
    out = capsys.readouterr().out
    assert "note: the described machine has this machine's" in out and "add --cores N to describe its own" in out
    assert main(["plan", path, "--gpu", "24GiB", "--ram", "64GiB", "--json"]) == 0
    assert any("--cores N" in n for n in json.loads(capsys.readouterr().out)["notes"])
    assert main(["plan", path, *MACHINE]) == 0
    assert "note:" not in capsys.readouterr().out


def test_the_banner_shows_the_address_asked_for() -> None:
    from launcher.cli.run import listening_url

    assert listening_url(ServerOptions(host="0.0.0.0", port=8081)) == (
        "http://0.0.0.0:8081 (every address of this machine)"
    )
    assert listening_url(ServerOptions(host="::1", port=9000)) == "http://[::1]:9000"
    assert listening_url(ServerOptions()) == "http://127.0.0.1:8080"
