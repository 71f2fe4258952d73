"""The local Hub (tests/support/hubserver.py) for the edge tests, and the environment of a user online against it.

A module sets HUB_PAGE_SIZE to list the repo tree in pages of another size (the default, 3, pages every repo).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.hubserver import HubServer


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest) -> Iterator[HubServer]:
    s = HubServer(page_size=getattr(request.module, "HUB_PAGE_SIZE", 3))
    yield s
    s.close()


@pytest.fixture
def online(server: HubServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment of a user online against the local hub (in-process and for subprocesses); the hub's log,
    faults and hooks start empty."""
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    import huggingface_hub.constants as hfc

    # huggingface_hub reads these two when it is first imported; the tests switch them per test.
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hfc, "ENDPOINT", server.endpoint)
    server.log.clear()
    server.faults.clear()
    server.url_ttl = None
    server.on_blob = None
    return dict(os.environ)
