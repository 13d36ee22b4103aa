"""A small policy that exercises every export corner: suffix and exact rules, an allow exception with a block nested
inside it, an exact allowed host, an include feed with a '_' name and a hosts-file line, IPv4/IPv6 CIDRs with an
allow hole and a block inside the hole. Addresses are documentation ranges; nothing here is ever contacted."""

from __future__ import annotations

from pathlib import Path

from enforcer.policy import Policy, load_policy
from tests.policy.policy_helpers import app_yaml, write

BODY = """\
block:
  - domain: blocked.example
    category: messaging
  - host: exact.shared.example
    category: web
  - domain: inner.open.blocked.example
    category: web
  - include: feed.txt
    category: web
  - url: "dl.shared.example/app/*"
    category: download
  - url: "*/mmtls/[0-9a-f]*"
    method: POST
    category: messaging
  - cidr: 198.51.100.0/24
    category: messaging
  - cidr: 198.51.100.192/26
    category: web
  - cidr: 2001:db8::/32
    category: messaging
  - cidr: 203.0.113.7/32
    category: messaging
allow:
  - domain: open.blocked.example
  - host: host-allowed.blocked.example
  - cidr: 198.51.100.128/25
"""

FEED = """\
# a feed with comments, a hosts-file line and a service label
feed-one.example
0.0.0.0 feed-two.example   # hosts-file style
_dmarc.feed-three.example
"""

# name -> (matcher verdict, what a query for it must get from a DNS engine fed the export)
BLOCKED = [
    "blocked.example",
    "www.blocked.example",
    "inner.open.blocked.example",
    "x.inner.open.blocked.example",
    "exact.shared.example",
    "feed-one.example",
    "sub.feed-two.example",
    "_dmarc.feed-three.example",
]
NOT_BLOCKED = [
    "open.blocked.example",
    "deep.x.open.blocked.example",
    "host-allowed.blocked.example",
    "shared.example",
    "other.example",
    "notblocked.example",
]


def build(folder: Path) -> Policy:
    write(folder, "feed.txt", FEED)
    write(folder, "test.yaml", app_yaml("testapp", BODY))
    return load_policy(folder / "test.yaml")
