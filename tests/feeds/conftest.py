"""Fixtures of the feed tests: ``server``, the local HTTPS feed server (feedserver.py) with its test CA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.certs import self_signed
from tests.feeds.feedserver import FeedServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[FeedServer, Path]]:
    cert, key = self_signed(tmp_path, "127.0.0.1", prefix="feeds")
    with FeedServer(cert, key) as srv:
        yield srv, cert
