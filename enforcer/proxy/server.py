"""The server gate: the catch-all check before mitmproxy opens any upstream connection, in every mode (regular,
upstream, transparent, WireGuard, reverse).

- ``server_connect``: a connection refused earlier (``ConnState.refused``), or whose address (any IP literal
  spelling) or SNI is blocked, gets ``server.error`` and is never opened. A name is resolved here first
  (``RESOLVE_TIMEOUT``) and every address it resolves to is judged by the ``cidr`` rules; the connection is then
  pinned to the first address (what asyncio would have dialled first), so a second lookup cannot swap in another
  address (DNS rebinding). Hosts an explicit url/store allow rule let through on this connection are not re-judged.
- ``server_connected``: puts the name back on the open connection (mitmproxy reuses connections and picks the
  upstream SNI by name); ``server_connect_error`` forgets the pin. At most ``MAX_PINNED`` pins are held.
"""

from __future__ import annotations

import asyncio
import socket

from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from enforcer.net import strip_zone
from enforcer.policy import Policy
from enforcer.policy.addresses import parse_ip_literal
from enforcer.proxy.runtime import Runtime, ip_or_none

RESOLVE_TIMEOUT = 10.0  # seconds for the gate's own lookup of a server name (mitmproxy's own connect has no bound)
MAX_PINNED = 4096  # server connections between server_connect and server_connected (a bound, not a working size)


class ServerGate:
    name = "enforcer_server"

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.pinned: dict[str, tuple[str, int]] = {}  # server connection id -> the address as mitmproxy had it

    async def server_connect(self, data: ServerConnectionHookData) -> None:
        server = data.server
        if server.error:
            return
        try:
            state = self.rt.conns.get(data.client.id)
            if state is not None and state.refused:
                server.error = state.refused
                return
            policy = self.rt.policy()
            address = server.address
            checks: list[tuple[str, str]] = []
            if address:
                checks.append((str(address[0]), "connect-block"))
            if server.sni and (not address or server.sni != address[0]):
                checks.append((server.sni, "tls-block"))
            for host, action in checks:
                if state is not None and host in state.url_allowed:
                    continue
                if self._gate(policy, host, action, data):
                    return
            if address and parse_ip_literal(str(address[0])) is None:
                await self._resolve_and_pin(policy, data)
        except Exception:
            self.rt.hook_error("server_connect")
            server.error = "enforcer: policy check failed"

    def _gate(
        self, policy: Policy, host: str, action: str, data: ServerConnectionHookData, ip: str | None = None
    ) -> bool:
        """Judge one host of a server connection; True (and ``server.error`` set) when it must not be opened."""
        match = policy.match_host(host)
        if match is None or not match.blocked:
            return False
        verdict = self.rt.judge(match, data.client)
        address = data.server.address
        if ip is not None:  # a resolved address is logged with the name that led to it
            domain = str(address[0]) if address else None
        else:
            domain = host if action == "connect-block" else None
        self.rt.record(
            verdict,
            action,
            data.client,
            url_domain=domain,
            tls_server_name=data.server.sni if action == "tls-block" else None,
            destination_ip=ip or (ip_or_none(str(address[0])) if address else None),
            destination_port=address[1] if address else None,
        )
        if verdict.blocked:
            data.server.error = f"blocked by enforcer rule {match.rule.id}"
            return True
        return False

    async def _resolve_and_pin(self, policy: Policy, data: ServerConnectionHookData) -> None:
        """Resolve the server name, judge every address, and connect to the first one only (see module docstring)."""
        server = data.server
        assert server.address is not None
        name, port = str(server.address[0]), int(server.address[1])
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(name, port, type=socket.SOCK_STREAM), timeout=RESOLVE_TIMEOUT
            )
        except TimeoutError:  # before OSError, of which it is a subclass
            server.error = f"cannot resolve {name}: no answer within {RESOLVE_TIMEOUT:g}s"
            return
        except (OSError, UnicodeError) as exc:
            # mitmproxy's own lookup would fail the same way; a second lookup must not get a different chance.
            server.error = f"cannot resolve {name}: {exc}"
            return
        addresses: list[str] = []  # as getaddrinfo gave them (a link-local address keeps its %zone for dialling)
        for info in infos:
            if str(info[4][0]) not in addresses:
                addresses.append(str(info[4][0]))
        for dial in addresses:
            ip = strip_zone(dial)
            if self._gate(policy, ip, "connect-block", data, ip=ip):
                return
        if not addresses:
            server.error = f"cannot resolve {name}: no address"
            return
        if len(self.pinned) >= MAX_PINNED:
            self.pinned.pop(next(iter(self.pinned)))
        self.pinned[server.id] = (name, port)
        server.address = (addresses[0], port)

    def server_connected(self, data: ServerConnectionHookData) -> None:
        original = self.pinned.pop(data.server.id, None)
        if original is not None:
            # The pin only chose the address to dial. Give the open connection its name back: mitmproxy matches later
            # requests to open connections, and picks the upstream SNI, by name. Server refuses a new address once
            # open; this is the same destination under its own name, so that check is stepped around on purpose.
            object.__setattr__(data.server, "address", original)

    def server_connect_error(self, data: ServerConnectionHookData) -> None:
        self.pinned.pop(data.server.id, None)
