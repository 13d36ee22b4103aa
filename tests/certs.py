"""Self-signed certificates for the local TLS servers of the tests (HTTPS origins, the DoH upstream)."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

from enforcer.dns.tls import write_certificate


def self_signed(
    folder: Path,
    name: str,
    prefix: str = "origin",
    days: int = 30,
    also: Sequence[str] = (),
    common_name: str | None = None,
) -> tuple[Path, Path]:
    """``(cert.pem, key.pem)`` for ``name`` and the names in ``also`` (DNS names, wildcards or IP addresses, put in
    subjectAltName), self-signed and marked as a CA so that a client can trust it directly as its CA file."""
    cert_path, key_path = folder / f"{prefix}-cert.pem", folder / f"{prefix}-key.pem"
    write_certificate(
        cert_path, key_path, common_name or name, [name, *also], days=days, ca=True, backdate=datetime.timedelta(days=1)
    )
    return cert_path, key_path
