"""mitmproxy addon enforcing the policy at every layer mitmproxy exposes; also loads alone: ``mitmdump -s addon.py``.

``EnforcerAddon`` is the composition, in the order a connection meets its hooks; each part has one job and shares
one ``Runtime`` (policy holder, counters, event writer, per-connection state):

- ``lifecycle.Lifecycle``: options (``enforcer_blocklist``, ``enforcer_events``, ``enforcer_metrics``,
  ``enforcer_passthrough``, ``enforcer_blocked_connect``), policy loading and watching, the /metrics server, ``done``.
- ``tunnel.ConnectGate`` (``http_connect``) and ``tunnel.TlsGate`` (``tls_clienthello``, ``tls_failed_client``):
  CONNECT and the ClientHello, before any TLS is decrypted; a blocked CONNECT becomes a block-page tunnel.
- ``server.ServerGate`` (``server_connect``/``server_connected``): the catch-all before any upstream connection is
  opened, in every mode; resolves names itself and pins the address it judged.
- ``request.RequestJudge`` (``requestheaders``): URL, store and name rules on every host a request names.
- ``dnsmode.DnsSinkhole`` (``dns_request``): mitmproxy's DNS/WireGuard modes sinkhole what ``enforcer dns`` does.

mitmproxy hooks fail open (an exception is logged and the flow proceeds), so every hook catches its own errors and
refuses the flow instead, counting ``enforcer_proxy_flows_total{outcome="error"}``. Flows another addon already
answered are left alone; decided flows carry ``flow.metadata["enforcer"]``.

``enforcer_proxy_flows_total{outcome}`` counts decisions: every CONNECT, HTTP request and DNS question, plus each TLS
handshake or server connection that matched a rule (allowed, blocked, monitored, invalid = unparsable host, error).
Enforced hits count in ``enforcer_blocked_total``, monitor hits in ``enforcer_monitored_total``, each with one event
(``Runtime.record``).

No dataclasses are defined in this file or the addons: mitmproxy loads a script without registering it in
``sys.modules``, which dataclasses need; the small records live in ``decide``. mitmproxy names every addon of the
chain; the parts carry ``enforcer_*`` names so they never clash with mitmproxy's own.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from enforcer.policy import Policy
from enforcer.policy.reloader import PolicyHolder
from enforcer.proxy.decide import BLOCKED, MONITORED
from enforcer.proxy.dnsmode import DnsSinkhole
from enforcer.proxy.lifecycle import Lifecycle
from enforcer.proxy.request import RequestJudge
from enforcer.proxy.runtime import Runtime
from enforcer.proxy.server import ServerGate
from enforcer.proxy.tunnel import ConnectGate, TlsGate


class EnforcerAddon:
    """The enforcer's addons over one ``Runtime``; mitmproxy runs each hook of ``addons`` in this order."""

    name = "enforcer"

    def __init__(self) -> None:
        # Construction stays cheap and side-effect free: mitmproxy re-imports the script on every edit.
        self.runtime = Runtime()
        self.lifecycle = Lifecycle(self.runtime)
        self.server = ServerGate(self.runtime)
        self.addons: list[Any] = [
            self.lifecycle,
            ConnectGate(self.runtime),
            TlsGate(self.runtime),
            self.server,
            RequestJudge(self.runtime),
            DnsSinkhole(self.runtime),
        ]

    @property
    def registry(self) -> CollectorRegistry:
        return self.runtime.registry

    @property
    def holder(self) -> PolicyHolder | None:
        return self.runtime.holder

    def policy(self) -> Policy:
        return self.runtime.policy()


__all__ = ["BLOCKED", "MONITORED", "EnforcerAddon", "addons"]

addons = [EnforcerAddon()]
