"""mitmproxy addon enforcing the policy at every layer mitmproxy exposes; also loads alone: ``mitmdump -s addon.py``.

``EnforcerAddon`` is the composition of the parts below, in the order a connection meets their hooks; each part has
one job and shares one ``Runtime`` (policy holder, counters, event writer, per-connection state). mitmproxy sees ONE
addon object: each hook a part defines is bound on ``EnforcerAddon`` as that part's method (``bind_hooks``), so
mitmproxy calls the part directly, with no relay frame. The parts are not nested as ``addons``: mitmproxy walks every
registered object for every event, and a plain HTTP request fires 8 of them (four hooks, each followed by ``update``):
6 nested parts made every walk longer. For the same reason, loaded as a script the module itself is that object, not a
holder of it (see the end of this file). Figures: docs/performance.md, "the proxy addon against bare mitmdump".

- ``lifecycle.Lifecycle``: options (``enforcer_blocklist``, ``enforcer_events``, ``enforcer_metrics``,
  ``enforcer_passthrough``, ``enforcer_blocked_connect``), policy loading and watching, the /metrics server, ``done``.
- ``tunnel.ConnectGate`` (``http_connect``) and ``tunnel.TlsGate`` (``tls_clienthello``, ``tls_failed_client``):
  CONNECT and the ClientHello, before any TLS is decrypted; a blocked CONNECT becomes a block-page tunnel.
- ``server.ServerGate`` (``server_connect``/``server_connected``): the catch-all before any upstream connection is
  opened, in every mode; resolves names itself and pins the address it judged.
- ``request.RequestJudge`` (``requestheaders``): URL, store and name rules on every host a request names.
- ``dnsmode.DnsSinkhole`` (``dns_request``, ``dns_response``): mitmproxy's DNS/WireGuard modes sinkhole what
  ``enforcer dns`` does, questions and answers.

mitmproxy hooks fail open (an exception is logged and the flow proceeds), so every hook catches its own errors and
refuses the flow instead, counting ``enforcer_proxy_flows_total{outcome="error"}``. Flows another addon already
answered are left alone; decided flows carry ``flow.metadata["enforcer"]``.

``enforcer_proxy_flows_total{outcome}`` counts decisions: every CONNECT, HTTP request and DNS question, plus each TLS
handshake or server connection that matched a rule (allowed, blocked, monitored, invalid = unparsable host, error).
Enforced hits count in ``enforcer_blocked_total``, monitor hits in ``enforcer_monitored_total``, each with one event
(``Runtime.record``).

No dataclasses are defined in this file or the addons: mitmproxy loads a script without registering it in
``sys.modules``, which dataclasses need; the small records live in ``decide``. The parts keep their ``enforcer_*``
names (they show in logs and reprs); mitmproxy registers only ``enforcer``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import mitmproxy.proxy.layers  # noqa: F401 - defines the HTTP, TLS and DNS hooks that hooks.all_hooks lists
from mitmproxy import hooks
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
    """The enforcer's addon parts over one ``Runtime``, registered with mitmproxy as one object (``bind_hooks``)."""

    name = "enforcer"

    def __init__(self) -> None:
        # Construction stays cheap and side-effect free: mitmproxy re-imports the script on every edit.
        self.runtime = Runtime()
        self.lifecycle = Lifecycle(self.runtime)
        self.server = ServerGate(self.runtime)
        self.parts: tuple[Any, ...] = (
            self.lifecycle,
            ConnectGate(self.runtime),
            TlsGate(self.runtime),
            self.server,
            RequestJudge(self.runtime),
            DnsSinkhole(self.runtime),
        )
        self.hooks = bind_hooks(self, self.parts)

    @property
    def registry(self) -> CollectorRegistry:
        return self.runtime.registry

    @property
    def holder(self) -> PolicyHolder | None:
        return self.runtime.holder

    def policy(self) -> Policy:
        return self.runtime.policy()


def bind_hooks(target: object, parts: Iterable[object]) -> tuple[str, ...]:
    """Make every mitmproxy hook a part defines an attribute of ``target`` bound to that part; returns their names.

    A hook defined by two parts would need a relay that calls both: refused here, so it cannot pass unnoticed.
    """
    owner: dict[str, object] = {}
    for part in parts:
        for name in hooks.all_hooks:
            if callable(getattr(type(part), name, None)):
                if name in owner:
                    raise TypeError(f"hook {name} is defined by both {owner[name]!r} and {part!r}")
                owner[name] = part
                setattr(target, name, getattr(part, name))
    return tuple(owner)


__all__ = ["ADDON", "BLOCKED", "MONITORED", "EnforcerAddon", "addons", "bind_hooks", "name"]

ADDON = EnforcerAddon()

# Loaded as a script (``mitmdump -s addon.py``), this module is the object mitmproxy registers: its hooks are the
# parts' own methods (those ``bind_hooks`` gave ``ADDON``), its name is the addon's, and its ``addons`` is empty.
# For every event mitmproxy walks the script loader, the script and its module, then what the module's ``addons``
# holds: an addon object there cost one more level of that walk (a generator resumed at every level, a getattr and a
# hasattr) for each of the 8 walks of a keep-alive request. Every name mitmproxy asks the module for is defined:
# on Python 3.11 a missing module attribute raises an AttributeError with a formatted message inside each getattr
# and hasattr (docs/performance.md, "The proxy addon, sixth pass"); a hook the parts do not define is None, which
# mitmproxy skips (``if func:``).
name = ADDON.name
addons: list[object] = []
for _hook in hooks.all_hooks:
    # Not add_log: mitmproxy warns at every start about any addon that has the deprecated event at all ("The add_log
    # event has been deprecated"), which reads as a fault to an operator; its lookup miss costs only log records.
    if _hook != "add_log":
        globals()[_hook] = getattr(ADDON, _hook) if _hook in ADDON.hooks else None
del _hook
