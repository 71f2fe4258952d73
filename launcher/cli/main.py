"""The `runq` entry point: dispatch a command line, turn known errors into `Error:`/`Hint:` and exit codes.

A front end. It imports only the parser and the error types at start, so `runq --help` is instant.
"""

from __future__ import annotations

import sys

from launcher.cli.parser import build_parser
from launcher.errors import EXIT_INTERRUPTED, EXIT_OK, RunqError, UsageError

COMMANDS = (
    "hw",
    "inspect",
    "plan",
    "build",
    "pull",
    "models",
    "run",
    "demo",
    "service",
    "tui",
    "worker",
    "calibrate",
    "tune",
    "serve",
    "clients",
)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        while True:
            result = _dispatch(argv)
            if isinstance(result, int):
                return result
            argv = result  # the TUI handed over a command (a chat needs the terminal to itself)
    except RunqError as e:
        print(f"Error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"Hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `runq inspect … | head`: the reader left; not an error worth a traceback.
        sys.stderr.close()
        return EXIT_OK


def _dispatch(argv: list[str]) -> int | list[str]:
    """Parse one command line and run it: an exit code, or the command line the TUI hands over."""
    extra: list[str] = []
    if "--" in argv:  # everything after `--` is for llama.cpp
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        _check_implicit_run(argv[0])
        argv = ["run", *argv]  # `runq deepseek-v3.1 --auto` is `runq run deepseek-v3.1 --auto`
    parser = build_parser()
    args = parser.parse_args(argv)
    args.extra = extra
    if extra and args.command not in ("run", None):
        raise UsageError(f"flags after -- go to llama.cpp, which `runq {args.command}` does not start",
                         hint="use them with `runq run`")  # fmt: skip
    if not getattr(args, "func", None):
        if sys.stdin.isatty() and sys.stdout.isatty():
            return ["tui"]  # a person at a terminal: the picker
        parser.print_help()
        return EXIT_OK
    result = args.func(args)
    return result if isinstance(result, list) else int(result)


def _check_implicit_run(word: str) -> None:
    """`runq WORD …` runs WORD when it is a model or a file; a typo'd command gets the closest command instead."""
    import difflib

    from launcher.catalog.profiles import find_profile, load_profiles
    from launcher.pipeline.target import check_model_name, looks_like_path

    check_model_name(word)
    if looks_like_path(word) or find_profile(word) is not None:
        return
    models = [p.name for p in load_profiles()]
    close = difflib.get_close_matches(word, [*COMMANDS, *models], n=1, cutoff=0.6)
    hint = f"did you mean `runq {close[0]}`? " if close else ""
    raise UsageError(
        f"{word!r} is neither a runq command nor a model runq knows",
        hint=f"{hint}commands: {', '.join(COMMANDS)}; models: {', '.join(models)} (or the path of a .gguf file)",
    )
