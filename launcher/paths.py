"""Where runq keeps its files (XDG cache and config dirs) and where the Hugging Face cache is: the one place.

`RUNQ_HOME` puts both under one directory (tests use it so the real
home is never touched), the llama.cpp builds included; `RUNQ_CACHE_DIR`
moves the cache alone (builds, logs, header caches, calibration). Nothing
here creates directories; callers do when they write.
"""

from __future__ import annotations

import os
from pathlib import Path


def _xdg(var: str, default: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / default


def _home_override() -> Path | None:
    value = os.environ.get("RUNQ_HOME")
    return Path(value) if value else None


def cache_dir() -> Path:
    """Builds, header caches: safe to delete, rebuilt on demand. RUNQ_CACHE_DIR moves just this one
    (the tests share one llama.cpp build between runs this way while config stays per test)."""
    if value := os.environ.get("RUNQ_CACHE_DIR"):
        return Path(value)
    home = _home_override()
    return home / "cache" if home else _xdg("XDG_CACHE_HOME", ".cache") / "runq"


def default_cache_dir() -> Path:
    """Where cache_dir() is when neither RUNQ_CACHE_DIR nor RUNQ_HOME moves it (a moved cache starts empty)."""
    return _xdg("XDG_CACHE_HOME", ".cache") / "runq"


def config_dir() -> Path:
    """Saved plans and service definitions: the user's choices."""
    home = _home_override()
    return home / "config" if home else _xdg("XDG_CONFIG_HOME", ".config") / "runq"


def logs_dir() -> Path:
    """llama-server and build logs (their paths are printed when they are written)."""
    return cache_dir() / "logs"


def calibration_dir() -> Path:
    """This machine's measured decode constants (`runq calibrate`) and the models they are measured with."""
    return cache_dir() / "calibration"


def tuned_dir() -> Path:
    """Saved `runq tune` results, per model, quant, machine and build: chosen plans, like services."""
    return config_dir() / "tuned"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, shared with other tools (same rules as huggingface_hub)."""
    if value := os.environ.get("HF_HUB_CACHE"):
        return Path(value)
    if value := os.environ.get("HF_HOME"):
        return Path(value) / "hub"
    return _xdg("XDG_CACHE_HOME", ".cache") / "huggingface" / "hub"


def hf_repo_dir(repo: str) -> Path:
    """One repo's folder in the Hugging Face cache: models--OWNER--NAME (blobs/, snapshots/, refs/)."""
    return hf_cache_dir() / ("models--" + repo.replace("/", "--"))


def runq_hub_dir(repo: str) -> Path:
    """runq's own cache for one Hub repo (listings, GGUF headers, header-only replicas): safe to delete."""
    return cache_dir() / "hub" / repo.replace("/", "--")
