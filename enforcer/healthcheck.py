"""Container health probe: ``python -m enforcer.healthcheck [TARGET]``; exit 0 healthy, 1 not.

TARGET (or $ENFORCER_HEALTH) is ``dns:HOST:PORT`` (one real DNS query, any answer with a valid header counts: the
resolver is serving) or an ``http(s)://`` URL (2xx counts), e.g. the analyst's /healthz or a /metrics endpoint.
One image serves every role, so the role's compose service sets the target.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import sys
import urllib.request

from .net import split_host_port


def probe_dns(host: str, port: int, timeout: float = 3.0) -> bool:
    qid = random.randrange(65536)
    # Query for "health.enforcer." type A, class IN, RD set.
    qname = b"".join(bytes([len(lbl)]) + lbl for lbl in (b"health", b"enforcer")) + b"\x00"
    question = qname + struct.pack("!HH", 1, 1)
    packet = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, (host, port))
        data = s.recv(4096)
    return len(data) >= 12 and struct.unpack("!H", data[:2])[0] == qid and bool(data[2] & 0x80)


def probe_http(url: str, timeout: float = 3.0) -> bool:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        status: int = resp.status
        return 200 <= status < 300


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = args[0] if args else os.environ.get("ENFORCER_HEALTH", "dns:127.0.0.1:5353")
    try:
        if target.startswith("dns:"):
            host, port = split_host_port(target[4:], 53)
            ok = probe_dns(host, port)
        else:
            ok = probe_http(target)
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {target}: {exc}", file=sys.stderr)
        return 1
    if not ok:
        print(f"unhealthy: {target}: bad answer", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
