"""Once mitmproxy runs, the addon freezes what start-up left alive (``Lifecycle.freeze_startup``): full garbage
collections under load no longer walk mitmproxy's and the enforcer's ~90,000 start-up objects (docs/performance.md,
"The proxy addon, fourth pass"). ``done`` (shutdown, a script reload) undoes it."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from enforcer.proxy.addon import EnforcerAddon
from tests.conftest import BLOCKLISTS, ROOT, free_port
from tests.proxy.helpers import harness, run_hook
from tests.proxy.test_e2e import stop_proxy, wait_port


@pytest.fixture
def unfrozen() -> Iterator[None]:
    # The unit tests freeze this pytest process: leave it as it was whatever they assert.
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_running_freezes_the_start_up_objects_and_done_undoes_it() -> None:
    a = EnforcerAddon()
    with harness(a) as tctx:
        tctx.configure(a, enforcer_blocklist=str(BLOCKLISTS))
        assert gc.get_freeze_count() == 0 and not a.lifecycle.frozen
        run_hook(a, "running")
        frozen = gc.get_freeze_count()
        assert a.lifecycle.frozen and frozen > 1000  # the policy alone is thousands of tracked objects
        a.lifecycle.freeze_startup()  # a second call is a no-op: no second collection, nothing frozen twice
        assert gc.get_freeze_count() == frozen
        run_hook(a, "done")
        assert gc.get_freeze_count() == 0 and not a.lifecycle.frozen


@pytest.mark.usefixtures("unfrozen")
def test_objects_made_after_the_freeze_are_still_collected() -> None:
    a = EnforcerAddon()
    with harness(a) as tctx:
        tctx.configure(a, enforcer_blocklist=str(BLOCKLISTS))
        run_hook(a, "running")
        try:
            cycle: list[object] = []
            cycle.append(cycle)  # per-request garbage cycles (mitmproxy's flows make them) are not frozen
            del cycle
            assert gc.collect() >= 1
        finally:
            run_hook(a, "done")


PROBE = textwrap.dedent(
    """
    import gc
    from mitmproxy import http

    class Probe:
        def request(self, flow):
            if flow.request.pretty_host == "probe.invalid":
                flow.response = http.Response.make(200, str(gc.get_freeze_count()).encode())

    addons = [Probe()]
    """
)


@pytest.mark.e2e
def test_enforcer_proxy_runs_with_the_start_up_objects_frozen(tmp_path: Path) -> None:
    """The real ``enforcer proxy`` (its mitmdump, the addon script), asked through a probe script that answers
    ``http://probe.invalid/`` itself (never dialled: the probe answers before any upstream connection, and .invalid
    never resolves) with the process's ``gc.get_freeze_count()``."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE, encoding="utf-8")
    port = free_port()
    log = tmp_path / "mitmdump.log"
    cmd = [sys.executable, "-m", "enforcer", "proxy", "--listen", f"127.0.0.1:{port}", "--blocklist", str(BLOCKLISTS)]
    cmd += ["--confdir", str(tmp_path / "confdir"), "--", "-s", str(probe)]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        wait_port(port, proc, log)
        with httpx.Client(proxy=f"http://127.0.0.1:{port}", timeout=15) as client:
            answer = client.get("http://probe.invalid/")
        assert answer.status_code == 200, log.read_text()[-3000:]
        # mitmdump, its addons, the enforcer and the shipped policy: tens of thousands of objects (~90,000 measured).
        assert int(answer.text) > 20_000, answer.text
        assert "Traceback" not in log.read_text()
    finally:
        stop_proxy(proc)
