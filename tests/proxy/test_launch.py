"""``enforcer proxy``'s mitmdump (enforcer.proxy.launch): mitmproxy's DumpMaster with the enforcer addon registered on
the master where ``-s addon.py`` runs a script's hooks (right after the script loader), its options declared before
mitmdump applies ``--set``; and the real process, started by ``enforcer proxy``, blocks and records like the script.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from mitmproxy import options
from mitmproxy.addons.script import ScriptLoader

from enforcer.proxy import addon
from enforcer.proxy.launch import EnforcerDumpMaster
from tests.conftest import BLOCKLISTS, ROOT, eventually, free_port


def test_the_addon_sits_where_a_script_runs_and_declares_its_options() -> None:
    async def build() -> tuple[list[object], options.Options]:
        opts = options.Options()
        master = EnforcerDumpMaster(opts, with_termlog=False, with_dumper=False)
        return list(master.addons.chain), opts

    chain, opts = asyncio.run(build())
    at = next(i for i, a in enumerate(chain) if isinstance(a, ScriptLoader))
    assert chain[at + 1 : at + 1 + len(addon.addons)] == addon.addons
    assert sum(a is addon.addons[0] for a in chain) == 1  # registered once
    for name in ("enforcer_blocklist", "enforcer_events", "enforcer_metrics", "enforcer_blocked_connect"):
        assert name in opts, name


def test_enforcer_proxy_runs_the_launcher_and_blocks(tmp_path: Path) -> None:
    """The real ``enforcer proxy`` (its child is ``python -m enforcer.proxy.launch``, no ``-s``): a blocked name
    gets the block page and one hit event, and /metrics counts it. Only 127.0.0.1 is contacted: mitmproxy's
    upstream is a closed local port (an allowed or a failed-open request gets 502 from it, never the internet)."""
    port, metrics, nowhere = free_port(), free_port(), free_port()
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "enforcer", "proxy", "--listen", f"127.0.0.1:{port}", "--blocklist", str(BLOCKLISTS),
         "--events", str(events), "--metrics", f"127.0.0.1:{metrics}", "--confdir", str(tmp_path / "confdir"),
         "--", "--mode", f"upstream:http://127.0.0.1:{nowhere}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        children = eventually(
            lambda: (
                subprocess.run(
                    ["ps", "-o", "args=", "--ppid", str(proc.pid)], capture_output=True, text=True
                ).stdout.strip()
                or None
            ),
            timeout=30,
        )
        assert "-m enforcer.proxy.launch" in children and " -s " not in children

        def blocked() -> int | None:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{port}"}))
            try:
                opener.open("http://weixin.qq.com/", timeout=5)
            except urllib.error.HTTPError as exc:
                return exc.code
            except OSError:
                return None  # not listening yet
            return 200

        assert eventually(blocked, timeout=60) == 403
        hit = json.loads(eventually(lambda: (events.exists() and events.read_text().strip()) or None, timeout=30))
        assert hit["event"]["action"] == "http-block" and hit["rule"]["ruleset"] == "wechat"
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
        assert 'enforcer_proxy_flows_total{outcome="blocked"} 1.0' in text
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
