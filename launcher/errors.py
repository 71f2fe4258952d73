"""The error tree users see: a message, an optional hint, an exit code.

Known problems raise a RunqError subclass; the CLI prints `Error: …` and
`Hint: …` and exits with the class's code (the TUI shows the same two lines
in a dialog). Anything else is a bug and keeps its traceback. Every error
class runq has is defined here, so the tree is in one place.
"""

from __future__ import annotations

from typing import Any

# Exit codes, documented in the README.
EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_DOES_NOT_FIT = 3
EXIT_EXTERNAL = 4
EXIT_INTERRUPTED = 130


class RunqError(Exception):
    """A problem the user can act on."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(RunqError):
    """Bad arguments, a bad machine description, a bad config or profile."""

    exit_code = EXIT_USAGE


class GGUFError(RunqError):
    """A GGUF file (or set of shards) that cannot be read: corrupt, truncated, hostile."""

    exit_code = EXIT_RUNTIME


class DoesNotFitError(RunqError):
    """No plan fits the machine. `detail` carries what was tried, for the renderer."""

    exit_code = EXIT_DOES_NOT_FIT

    def __init__(self, message: str, hint: str | None = None, detail: Any = None) -> None:
        super().__init__(message, hint)
        self.detail = detail


class ExternalToolError(RunqError):
    """A tool runq drives (cmake, a compiler, llama.cpp) is missing or failed."""

    exit_code = EXIT_EXTERNAL


# --- raised by the edges (they re-export them where they are used) ---------------------------------


class HubError(RunqError):
    """The Hub said no, or could not be reached."""


class Offline(HubError):
    """No network (or HF_HUB_OFFLINE): the caller falls back to what is cached."""


class Unavailable(Offline):
    """The Hub answered, but with a server error (5xx) or 429 after retries: the caller falls back to the cache."""


class NotSparse(RunqError):
    """The filesystem allocated the holes: a header-only replica would take the model's full size on disk."""


class DownloadError(RunqError):
    """A download that could not finish (network, disk, a checksum that does not match)."""


class Changed(DownloadError):
    """The Hub now has another version of the file than the one this download was for."""


class BuildFailed(ExternalToolError):
    """cmake or the compiler failed while building llama.cpp."""


class ServerFailed(ExternalToolError):
    """llama-server would not start, or died; `kind` names the cause when the log tells it (port, oom, model)."""

    def __init__(self, message: str, hint: str | None = None, kind: str | None = None) -> None:
        super().__init__(message, hint)
        self.kind = kind


class ProjectionFailed(ExternalToolError):
    """llama-fit-params could not project this model (unknown architecture, newer GGUF, crash, timeout)."""


class WorkerUnreachable(RunqError):
    """A `runq worker` named with --rpc does not answer."""

    exit_code = 1


class ServiceError(RunqError):
    """A unit file or saved service record runq will not touch or cannot read."""


class SystemctlFailed(ExternalToolError):
    """systemctl is missing or refused."""


def format_validation_error(e: Any) -> str:
    """A pydantic ValidationError as 'field.path: message; …', the way a user can find the field."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
