"""Who may reach the analyst: the Host header check against DNS rebinding, and where it may listen.

- ``host_names(settings)``: the names a request's ``Host`` may carry (loopback names, the listen address, the
  ``--allowed-host`` names); ``host_allowed(header, names, port, local)``: whether one ``Host`` value names this
  analyst (the name and the port the request came in on; case and one trailing dot ignored).
- ``check_listen(settings)``: ``HOST:PORT``, refusing a non-loopback address without a token (ConfigError).
"""

from __future__ import annotations

import contextlib
import ipaddress
from typing import TYPE_CHECKING

from ..config import ConfigError
from ..net import split_host_port

if TYPE_CHECKING:
    from .state import AnalystSettings

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bracket(host: str) -> str:
    h = host.strip().lower().strip("[]")
    return f"[{h}]" if ":" in h else h.removesuffix(".")


def host_names(settings: AnalystSettings) -> frozenset[str]:
    """The names a request's Host header may carry: loopback, the listen address, the configured names."""
    names = set(LOOPBACK_NAMES)
    with contextlib.suppress(ValueError):
        names.add(_bracket(split_host_port(settings.listen)[0]))
    names.update(_bracket(h) for h in settings.allowed_hosts if h.strip())
    return frozenset(names)


def host_allowed(header: str, names: frozenset[str], port: int | None, local: str | None = None) -> bool:
    """Whether ``Host: header`` names this analyst: a name in ``names`` (or the local address the request came in
    on), and the port the request came in on (no port: only when that is 80). Case and one trailing dot of a name
    are ignored."""
    h = header.strip().lower()
    if not h or not h.isascii():
        return False
    if h.startswith("["):
        close = h.find("]")
        if close < 0:
            return False
        host, rest = h[: close + 1], h[close + 1 :]
    else:
        host, sep, tail = h.partition(":")
        rest = sep + tail
    if rest:
        if not rest.startswith(":") or not rest[1:].isdigit() or len(rest) > 6:
            return False
        given = int(rest[1:])
    else:
        given = 80
    if port is not None and given != port:
        return False
    host = _bracket(host)
    return host in names or (local is not None and host == _bracket(local))


def check_listen(settings: AnalystSettings) -> tuple[str, int]:
    """HOST:PORT, refusing a non-loopback address without a token (ConfigError, one line)."""
    try:
        host, port = split_host_port(settings.listen)
    except ValueError as exc:
        raise ConfigError(f"analyst: invalid --listen: {exc}") from None
    if not settings.token and not is_loopback(host):
        raise ConfigError(
            f"analyst: refusing to listen on {settings.listen} without a token: give --token-file, "
            "or listen on 127.0.0.1 / ::1"
        )
    return host, port
