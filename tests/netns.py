"""A loopback-only network namespace for tests that name real or banned addresses (see DEVELOPERS.md).

``loopback_only_netns()`` moves the calling thread (and every socket and process it creates afterwards) into a new
network namespace that has only ``lo`` up, so that a resolver or proxy that failed open still cannot reach a real
WeChat or Kaspersky host. The namespace is deleted on exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import IN_CI, require_tool

CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def loopback_only_netns() -> Iterator[None]:
    """Run the calling thread (and whatever it starts) in a new network namespace with only `lo` up."""
    ip = require_tool("ip")
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("network namespaces need root")
        pytest.skip("network namespaces need root")
    name = f"enforcer-e2e-{uuid.uuid4().hex[:8]}"
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    subprocess.run([ip, "netns", "add", name], check=True, timeout=10)
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        subprocess.run([ip, "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                pytest.fail(f"setns failed: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            libc.setns(original, CLONE_NEWNET)
    finally:
        os.close(original)
        subprocess.run([ip, "netns", "delete", name], timeout=10)
