"""Every ``--mode`` for every query type, through the chain in-process (the sinkhole, the real chain and policy; one
chain per mode instead of one process); bad flag values through the CLI; the config file section on a real process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dns.rdatatype
import pytest
from chainharness import ChainHarness
from dnshelpers import BLOCKLISTS, ROOT, DnsProcess, addresses, ede_texts, rcode
from fakeupstream import FakeUpstream

from tests.conftest import run_cli

MODES = ["null", "nxdomain", "nodata", "refused", "ip:192.0.2.66,2001:db8::66", "ip:192.0.2.66"]
QTYPES = ["A", "AAAA", "HTTPS", "SVCB", "MX", "TXT", "ANY"]


@pytest.fixture(scope="module", params=MODES)
def moded(request: pytest.FixtureRequest, upstream: FakeUpstream) -> Iterator[tuple[str, ChainHarness]]:
    harness = ChainHarness(upstream.address, BLOCKLISTS, mode=request.param, block_ttl=42)
    yield request.param, harness
    harness.close()


def expected(mode: str, qtype: str) -> tuple[str, list[str], bool]:
    """(rcode, addresses, SOA in authority)."""
    if mode == "nxdomain":
        return "NXDOMAIN", [], True
    if mode == "refused":
        return "REFUSED", [], False
    if mode == "nodata":
        return "NOERROR", [], True
    v4, v6 = ("0.0.0.0", "::") if mode == "null" else ("192.0.2.66", "2001:db8::66" if "," in mode else None)
    if qtype == "A":
        return "NOERROR", [v4], False
    if qtype == "AAAA" and v6:
        return "NOERROR", [v6], False
    return "NOERROR", [], True


@pytest.mark.parametrize("qtype", QTYPES)
def test_mode_answers(moded: tuple[str, ChainHarness], upstream: FakeUpstream, qtype: str) -> None:
    mode, proc = moded
    for name in ("Long.Weixin.QQ.com.", "kaspersky.com"):
        msg = proc.query(name, qtype, edns=0)  # as DnsProcess.query: EDNS0, payload 1232
        want_rcode, want_addrs, want_soa = expected(mode, qtype)
        assert rcode(msg) == want_rcode, (mode, qtype, msg)
        assert addresses(msg) == want_addrs, (mode, qtype, msg)
        assert all(rrset.ttl == 42 for rrset in msg.answer)
        soa = [rr for rr in msg.authority if rr.rdtype == dns.rdatatype.SOA]
        assert bool(soa) == want_soa, (mode, qtype, msg)
        if soa:
            assert soa[0].ttl == 42 and soa[0][0].minimum == 42
            # The SOA owner is the blocked domain (an ancestor of the name), as RFC 2308 expects.
            assert soa[0].name.to_text(omit_final_dot=True).lower() in ("weixin.qq.com", "kaspersky.com")
        codes = ede_texts(msg)
        assert codes and codes[0][0] == 15 and ":domain:" in codes[0][1]
    assert "long.weixin.qq.com" not in upstream.names()


@pytest.mark.parametrize(
    ("flags", "code"),
    [
        (["--mode", "sinkhole"], 1),
        (["--mode", "ip:not-an-ip"], 1),
        (["--listen", "localhost"], 1),
        (["--upstream", "dns.example:53"], 1),
        (["--allow", "10.0.0.0/33"], 1),
        (["--timeout", "soon"], 1),
        (["--cache-size", "-1"], 1),
        (["--blocklist", "/nonexistent/blocklist.yaml"], 1),
        (["--no-such-flag"], 2),
    ],
)
def test_bad_flags(flags: list[str], code: int) -> None:
    argv = ["dns", "--upstream", "127.0.0.1:9", "--listen", "127.0.0.1:0", *flags]
    if flags[0] == "--blocklist":  # refused while the process starts serving (policy load): a real process
        proc = subprocess.run([sys.executable, "-m", "enforcer", *argv], capture_output=True, text=True, timeout=30,
                              cwd=ROOT)  # fmt: skip
    else:  # refused by argparse or by the settings check, before anything starts: the CLI in-process
        proc = run_cli(*argv)
    assert proc.returncode == code, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and "Traceback" not in proc.stderr
    if code == 1:
        assert len(lines) == 1, lines


def test_config_file_section(upstream: FakeUpstream, tmp_path: Path) -> None:
    """``--config`` YAML (section dns, keys mirror the flags) is applied; a flag beats the config."""
    cfg = tmp_path / "enforcer.yaml"
    cfg.write_text(
        f"dns:\n  mode: nxdomain\n  block-ttl: 17\n  upstream: ['{upstream.address}']\n  blocklist: ['{BLOCKLISTS}']\n"
    )
    proc = DnsProcess(tmp_path, "--config", str(cfg), "--block-ttl", "23")
    try:
        msg = proc.query("weixin.qq.com", "A")
        assert rcode(msg) == "NXDOMAIN"
        assert msg.authority[0].ttl == 23
        assert addresses(proc.query("config.example", "A")) == ["192.0.2.53"]
    finally:
        assert proc.stop() == 0
