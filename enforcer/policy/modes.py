"""``--mode``: how a blocked name is answered, parsed once for every consumer (the resolver's sinkhole, the RPZ feed,
the exports).

- ``MODES``: the accepted spellings, for help texts and errors.
- ``Mode``: a parsed mode (``kind`` and, for ``ip``, the IPv4/IPv6 sinkhole addresses; ``null`` answers 0.0.0.0 / ::).
- ``parse_mode(text)``: THE parser; ValueError with the reason on a bad value.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

MODES = ("nxdomain", "nodata", "null", "refused", "ip:ADDR[,ADDR6]")


@dataclass(frozen=True, slots=True)
class Mode:
    """A parsed ``--mode``: nxdomain, nodata, null, refused, or ip with an IPv4 and/or IPv6 sinkhole address."""

    kind: str
    v4: str | None = None
    v6: str | None = None

    @property
    def addresses(self) -> tuple[str | None, str | None]:
        if self.kind == "null":
            return "0.0.0.0", "::"
        return self.v4, self.v6


def parse_mode(mode: str) -> Mode:
    """``nxdomain``, ``nodata``, ``null``, ``refused`` or ``ip:ADDR[,ADDR6]``; ValueError with the reason otherwise."""
    m = mode.strip().lower()
    if m in ("nxdomain", "nodata", "null", "refused"):
        return Mode(m)
    if m.startswith("ip:"):
        v4 = v6 = None
        for part in m[3:].split(","):
            try:
                addr = ipaddress.ip_address(part.strip())
            except ValueError:
                raise ValueError(f"mode {mode!r}: {part.strip()!r} is not an IP address") from None
            if addr.version == 4 and v4 is None:
                v4 = str(addr)
            elif addr.version == 6 and v6 is None:
                v6 = str(addr)
            else:
                raise ValueError(f"mode {mode!r}: give at most one IPv4 and one IPv6 address")
        return Mode("ip", v4, v6)
    raise ValueError(f"unknown mode {mode!r} (expected one of: {', '.join(MODES)})")
