"""TLS for the encrypted DNS listeners: the certificate, its contexts, and picking up a new one without a restart.

- ``CertSource``: the PEM certificate chain and key (``--tls-cert``/``--tls-key``); ``contexts(alpn)`` gives the
  current ``ssl.SSLContext`` for a listener (TLS 1.2 or later, the listener's ALPN, a callback that records the
  client's SNI on the ``SSLObject`` as ``enforcer_sni`` for the ClientID). ``reload_if_changed()`` re-reads the
  files when their mtime/size changed (call it off the event loop): the contexts are rebuilt, so every handshake
  after it uses the new certificate; connections already open keep theirs. A bad pair keeps the last good one,
  says why in one line and counts it (``failures``; ``reloads``: the good ones). ``on_reload`` callbacks (DoQ's
  configuration) run after a successful reload.
- ``self_signed(directory, names)``: without ``--tls-cert``, on loopback only, a self-signed certificate for
  ``localhost``, 127.0.0.1, ::1 (and ``--server-name`` with its ``*.`` wildcard) is made once in ``directory``
  and reused afterwards; returns the two paths.
- ``sni_of(ssl_object)``: the server name the client sent (None without SNI).

Why the handshake happens after the source check: the listeners accept plain TCP, apply ``--allow`` and the
per-source caps from the address alone, and only then start TLS (``StreamWriter.start_tls``), so a refused source
costs no handshake (enforcer/dns/encrypted.py).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("enforcer.dns")

SELF_SIGNED_DAYS = 365


def _record_sni(sslobj: Any, server_name: str | None, _ctx: ssl.SSLContext) -> None:
    sslobj.enforcer_sni = server_name


def sni_of(ssl_object: Any) -> str | None:
    return getattr(ssl_object, "enforcer_sni", None) if ssl_object is not None else None


def make_context(cert: str, key: str, alpn: list[str]) -> ssl.SSLContext:
    """A server context: TLS 1.2+, ``alpn`` offered, the SNI recorded. Raises ssl.SSLError/OSError on a bad pair."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(alpn)
    ctx.sni_callback = _record_sni
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


class CertSource:
    """The listeners' certificate: contexts per ALPN list, rebuilt when the files change."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert = cert
        self.key = key
        self._alpns: dict[tuple[str, ...], ssl.SSLContext] = {}
        self._stamp = self._stat()
        self.on_reload: list[Callable[[], None]] = []
        self.reloads = 0
        self.failures = 0  # reloads refused (a bad pair): enforcer_dns_encrypted_reloads_total{result="failure"}
        self._alpns[("dot",)] = make_context(cert, key, ["dot"])  # a bad pair fails at start, with the file names

    def _stat(self) -> tuple[Any, ...]:
        stamps: list[tuple[int, int, int] | None] = []
        for path in (self.cert, self.key):
            try:
                st = os.stat(path)
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def context(self, alpn: list[str]) -> ssl.SSLContext:
        """The current context for ``alpn``. Listeners ask for theirs at start (``EncryptedListeners.start``): a
        context first made later would read whatever is on disk then, maybe a broken pair the reload refused."""
        key = tuple(alpn)
        ctx = self._alpns.get(key)
        if ctx is None:
            ctx = self._alpns[key] = make_context(self.cert, self.key, alpn)
        return ctx

    def reload_if_changed(self) -> bool:
        """Rebuild every context when the cert or key changed; True on a reload. Runs in a worker thread: the new
        dict is built aside and swapped in one assignment."""
        stamp = self._stat()
        if stamp == self._stamp or None in stamp:
            return False  # unchanged, or one of the pair is missing mid-swap: wait for both
        try:
            fresh = {key: make_context(self.cert, self.key, list(key)) for key in list(self._alpns) or [("dot",)]}
        except (OSError, ssl.SSLError, ValueError) as exc:
            # A half-written pair (new cert, old key) fails here; it is read again when a file changes next.
            log.warning("TLS certificate %s not reloaded, the previous one is kept: %s", self.cert, exc)
            self._stamp = stamp
            self.failures += 1
            return False
        self._alpns = fresh
        self._stamp = stamp
        self.reloads += 1
        log.info("TLS certificate %s reloaded: new handshakes use it", self.cert)
        for callback in self.on_reload:
            callback()
        return True


def write_certificate(
    cert_path: Path,
    key_path: Path,
    common_name: str,
    alt_names: Sequence[str],
    *,
    days: int,
    ca: bool = False,
    backdate: datetime.timedelta = datetime.timedelta(minutes=5),
) -> None:
    """Write a self-signed P-256 certificate for ``alt_names`` (DNS names, wildcards or IP addresses, put in
    subjectAltName) and its key (mode 0600). ``ca``: marked as a CA, so that a client can trust it directly as its
    CA file; ``backdate``: valid from that long ago (a client whose clock is a little behind still accepts it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def general_name(name: str) -> x509.GeneralName:
        try:
            return x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            return x509.DNSName(name)

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - backdate)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([general_name(n) for n in alt_names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def self_signed(directory: str | Path, names: list[str]) -> tuple[str, str]:
    """``(cert, key)`` paths of a self-signed certificate in ``directory`` for loopback use, made on first use."""
    d = Path(directory)
    cert_path, key_path = d / "dns-selfsigned-cert.pem", d / "dns-selfsigned-key.pem"
    if cert_path.is_file() and key_path.is_file():
        return str(cert_path), str(key_path)
    d.mkdir(parents=True, exist_ok=True)
    alt = ["localhost", *names, "127.0.0.1", "::1"]
    write_certificate(cert_path, key_path, names[0] if names else "localhost", alt, days=SELF_SIGNED_DAYS)
    return str(cert_path), str(key_path)
