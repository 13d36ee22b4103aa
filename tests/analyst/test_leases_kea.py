"""Real parts: a real Kea DHCPv4 server and real DHCP clients (busybox ``udhcpc``) in network namespaces; the lease
file is the one Kea writes. Two clients with different MACs take the one address of the pool one after the other
(the first releases it); events at their times are attributed to the right device by ``enforcer report --leases``,
and the analyst's lease follower picks up the second lease when Kea appends it.

Topology: netns SRV has a bridge with 192.0.2.1/24 (TEST-NET-1) and Kea on it; netns A and B each have an ``eth0``
(MAC 02:00:00:00:0a:01 / 02:00:00:00:0b:02) on a veth pair into the bridge. Nothing leaves the namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from enforcer.analyst.identity import AnalystIdentity
from enforcer.analyst.inventory import Inventory
from enforcer.policy import load_policy
from tests.analyst.analyst_helpers import dns_hit, write_events
from tests.conftest import BLOCKLISTS, eventually, require_tool, run_cli

pytestmark = pytest.mark.e2e

KEA = "/usr/sbin/kea-dhcp4"
ADDRESS = "192.0.2.50"
MAC_A, MAC_B = "02:00:00:00:0a:01", "02:00:00:00:0b:02"
SCRIPT = """#!/bin/sh
# udhcpc's event script: configure the address (the release is sent from it) and say the lease is bound.
case "$1" in
  deconfig) ip addr flush dev "$interface" scope global ;;
  bound|renew) ip addr add "$ip/${mask:-24}" dev "$interface" 2>/dev/null; : > "$UDHCPC_BOUND" ;;
esac
exit 0
"""


def _run(*args: str) -> None:
    subprocess.run(args, check=True, timeout=10, capture_output=True)


@contextlib.contextmanager
def _namespaces() -> Iterator[tuple[str, str, str]]:
    ip = require_tool("ip")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = uuid.uuid4().hex[:6]
    srv, a, b = f"idk-s-{tag}", f"idk-a-{tag}", f"idk-b-{tag}"
    made: list[str] = []
    try:
        for ns in (srv, a, b):
            _run(ip, "netns", "add", ns)
            made.append(ns)
            _run(ip, "-n", ns, "link", "set", "lo", "up")
        _run(ip, "-n", srv, "link", "add", "br0", "type", "bridge")
        _run(ip, "-n", srv, "addr", "add", "192.0.2.1/24", "dev", "br0")
        _run(ip, "-n", srv, "link", "set", "br0", "up")
        for ns, mac, port in ((a, MAC_A, "va"), (b, MAC_B, "vb")):
            _run(ip, "-n", srv, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _run(ip, "-n", srv, "link", "set", port, "master", "br0")
            _run(ip, "-n", srv, "link", "set", port, "up")
            _run(ip, "-n", ns, "link", "set", "eth0", "address", mac)
            _run(ip, "-n", ns, "link", "set", "eth0", "up")
        yield srv, a, b
    finally:
        for ns in made:
            subprocess.run([ip, "netns", "delete", ns], timeout=10)


@contextlib.contextmanager
def _kea(tmp: Path, srv: str) -> Iterator[Path]:
    leases = tmp / "kea-leases4.csv"
    config = {
        "Dhcp4": {
            "interfaces-config": {"interfaces": ["br0"], "dhcp-socket-type": "raw"},
            "lease-database": {"type": "memfile", "persist": True, "name": str(leases), "lfc-interval": 0},
            "valid-lifetime": 600,
            "renew-timer": 300,
            "rebind-timer": 500,
            # One address: the second client can only get it after the first released it.
            "subnet4": [{"id": 1, "subnet": "192.0.2.0/24", "pools": [{"pool": f"{ADDRESS} - {ADDRESS}"}]}],
            "loggers": [
                {"name": "kea-dhcp4", "output_options": [{"output": str(tmp / "kea.log")}], "severity": "INFO"}
            ],
        }
    }
    (tmp / "kea.json").write_text(json.dumps(config), encoding="utf-8")
    env = {**os.environ, "KEA_PIDFILE_DIR": str(tmp), "KEA_LOCKFILE_DIR": str(tmp)}
    proc = subprocess.Popen(
        ["ip", "netns", "exec", srv, KEA, "-c", str(tmp / "kea.json")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "kea.err", "wb"),  # noqa: SIM115  # closed with the process
    )
    try:
        eventually(lambda: "DHCP4_STARTED" in _text(tmp / "kea.log") or proc.poll() is not None, timeout=20)
        assert proc.poll() is None, _text(tmp / "kea.err")
        yield leases
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _rows(leases: Path) -> list[list[str]]:
    return [line.split(",") for line in _text(leases).splitlines()[1:] if line]


def _lease_then_release(tmp: Path, ns: str, mac: str, leases: Path) -> tuple[datetime, datetime]:
    """A real client takes the address and then releases it; (bound, released) as seen in Kea's file."""
    busybox = require_tool("busybox")
    pidfile = tmp / f"udhcpc-{mac[-2:]}.pid"
    bound_marker = tmp / f"udhcpc-{mac[-2:]}.bound"
    script = tmp / "udhcpc.sh"
    script.write_text(SCRIPT, encoding="utf-8")
    script.chmod(0o755)
    log = open(tmp / f"udhcpc-{mac[-2:]}.log", "wb")  # noqa: SIM115  # closed below
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, busybox, "udhcpc", "-i", "eth0", "-f", "-R", "-t", "10", "-T", "1",
         "-s", str(script), "-p", str(pidfile)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "UDHCPC_BOUND": str(bound_marker)},
    )  # fmt: skip
    try:
        eventually(lambda: any(r[1] == mac and r[3] != "0" for r in _rows(leases)), timeout=30)
        bound = datetime.now(UTC)
        # Kea writes its row when it sends the ACK, before udhcpc has read it: a SIGUSR2 then would find udhcpc still
        # REQUESTING, and it enters RELEASED without sending anything (later signals do nothing). The event script
        # runs in the loop iteration that sets BOUND, and signals are read at the top of the next one.
        eventually(bound_marker.exists, timeout=10)
        eventually(pidfile.exists, timeout=5)
        pid = int(pidfile.read_text().strip())

        def released_row() -> bool:
            # udhcpc sends one DHCPRELEASE per SIGUSR2 and never repeats it: a release lost on the veth (or a signal
            # that came before udhcpc's main loop) would leave Kea's row bound, so ask again until Kea has it.
            if any(r[1] == mac and r[3] == "0" for r in _rows(leases)):
                return True
            os.kill(pid, signal.SIGUSR2)  # udhcpc: release the lease now
            return False

        eventually(released_row, timeout=15, interval=1.0)
        released = datetime.now(UTC)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
    return bound, released


def test_two_clients_one_address_attributed_by_kea_leases(tmp_path: Path) -> None:
    if not Path(KEA).exists():
        pytest.skip("kea-dhcp4 not installed (make system-deps)")
    policy = load_policy([BLOCKLISTS])
    with _namespaces() as (srv, ns_a, ns_b), _kea(tmp_path, srv) as leases:
        a_bound, a_released = _lease_then_release(tmp_path, ns_a, MAC_A, leases)
        inventory_file = tmp_path / "inv.csv"
        inventory_file.write_text(
            f"mac,device,owner,unit\n{MAC_A},phone-a,Alice Martin,Finance\n{MAC_B},laptop-b,Bob Roy,Ops\n",
            encoding="utf-8",
        )
        # The analyst's follower has read A's lease only; Kea appends B's while it runs.
        follower = AnalystIdentity([str(leases)], 60, Inventory.load(inventory_file))
        time.sleep(1.1)  # Kea's times are whole seconds: B's lease starts in a later second than A's events
        b_bound, b_released = _lease_then_release(tmp_path, ns_b, MAC_B, leases)
        assert follower.refresh() >= 2  # B's grant and release, appended to the file it read before
    rows = _rows(leases)
    assert [r[1] for r in rows] == [MAC_A, MAC_A, MAC_B, MAC_B] and {r[0] for r in rows} == {ADDRESS}

    # Events from the one address at each client's time (while it held the lease).
    a_times = [a_bound + (a_released - a_bound) * i / 4 for i in range(3)]
    b_times = [b_bound + (b_released - b_bound) * i / 4 for i in range(2)]
    events = [dns_hit(policy, "long.weixin.qq.com", ADDRESS, t) for t in a_times + b_times]
    write_events(tmp_path / "ev" / "events.jsonl", events)
    out = run_cli(
        "report", "--events", str(tmp_path / "ev"), "--leases", str(leases), "--inventory", str(inventory_file),
        "--blocklist", str(BLOCKLISTS), "--format", "json", "--attempt-window", "0",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    got = {(r["device"], r["mac"], r["identity"], r["owner"]): r["hits"] for r in doc["clients"]}
    assert got == {("phone-a", MAC_A, "lease", "Alice Martin"): 3, ("laptop-b", MAC_B, "lease", "Bob Roy"): 2}
    # The follower attributes the same way, from the lines Kea appended after its first read.
    ident = follower.identifier()
    for t, device in [(t, "phone-a") for t in a_times] + [(t, "laptop-b") for t in b_times]:
        us = int(t.timestamp() * 1_000_000)
        assert ident.identify(ADDRESS, us).device == device, (t, device)
    # Without the lease file the same events are one bare address.
    out = run_cli("report", "--events", str(tmp_path / "ev"), "--format", "json", "--blocklist", str(BLOCKLISTS))
    assert [(r["client"], r["identity"], r["hits"]) for r in json.loads(out.stdout)["clients"]] == [
        (ADDRESS, "address", 5)
    ]
