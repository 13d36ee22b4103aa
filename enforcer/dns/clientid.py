"""Device identity on the encrypted listeners: the ClientID, and which ClientIDs are known.

- ``client_id_from_sni(sni, server_name)``: the ClientID a DoT/DoQ client names in its TLS server name
  (``<id>.<--server-name>``): the id, None (no id: the bare server name, another name, or no SNI), or ``INVALID``
  (a name under ``--server-name`` whose first part is not one valid label, e.g. ``a.b.dns.example.gov``).
- ``client_id_from_path(path)``: the same for a DoH path ``/dns-query/<id>``; ``/dns-query`` alone gives None.
- ``parse_client_id(text)``: one DNS label ``[a-z0-9-]{1,63}`` after case folding, else ``INVALID``.
- ``KnownIds``: the ids ``--require-client-id`` accepts, from ``--client-ids FILE`` (one per line, ``#`` comments)
  and ``--inventory FILE`` (its ``client_id`` column, read by enforcer/analyst/inventory.py, the inventory's one
  reader). ``reload_if_changed()`` re-reads the files when their mtime/size changed (call it off the event loop);
  a bad file keeps the last good set, says why in one line and counts it (``failures``; ``reloads``: good ones).

Why a label and nothing else: the id travels as the first label of a TLS server name (Android's Private DNS
hostname, Apple's ``ServerName``), so it must be one; case folding because DNS names are case-insensitive and some
clients upper-case them.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger("enforcer.dns")

INVALID = "\x00invalid"  # a ClientID was given but is not one valid label: refused, never treated as "no id"
_LABEL = re.compile(r"[a-z0-9-]{1,63}")
DOH_PATH = "/dns-query"
MAX_IDS_FILE = 16 * 1024 * 1024  # a client-ids file is one short line per device


def parse_client_id(text: str) -> str:
    """``text`` case-folded when it is one DNS label of letters, digits and hyphens, else ``INVALID``."""
    folded = text.lower()
    if _LABEL.fullmatch(folded) is None or not text.isascii():
        return INVALID
    return folded


def client_id_from_sni(sni: str | None, server_name: str | None) -> str | None:
    """The ClientID in a TLS server name ``<id>.<server_name>``, None when it carries none, ``INVALID`` when the
    part before ``server_name`` is not one valid label."""
    if not sni or not server_name:
        return None
    name = sni.rstrip(".").lower()
    suffix = "." + server_name
    if not name.endswith(suffix):
        return None  # the bare server name, an IP, or a name we are not: no ClientID
    return parse_client_id(name[: -len(suffix)])


def client_id_from_path(path: str) -> str | None:
    """The ClientID of a DoH request path (query string already removed): ``/dns-query/<id>`` gives the id (or
    ``INVALID``), ``/dns-query`` None. The caller has checked the path starts with ``/dns-query``."""
    rest = path[len(DOH_PATH) :].strip("/")
    if not rest:
        return None
    return parse_client_id(rest)


def normalize_server_name(name: str) -> str:
    """``--server-name``: a lower-case host name without the trailing dot; ValueError when it is not one."""
    folded = name.strip().rstrip(".").lower()
    labels = folded.split(".")
    if not folded or len(folded) > 253 or any(_LABEL.fullmatch(label) is None for label in labels):
        raise ValueError(f"{name!r}: not a host name (letters, digits, hyphens and dots)")
    return folded


def read_client_ids(path: str) -> frozenset[str]:
    """The ids of a ``--client-ids`` file; ValueError ``PATH:LINE: message`` on a bad line."""
    p = Path(path)
    if p.stat().st_size > MAX_IDS_FILE:
        raise ValueError(f"{path}: larger than {MAX_IDS_FILE} bytes")
    ids = set()
    for lineno, raw in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        cid = parse_client_id(text)
        if cid == INVALID:
            raise ValueError(f"{path}:{lineno}: {text!r} is not a ClientID (one DNS label: a-z, 0-9, -; 1-63)")
        ids.add(cid)
    return frozenset(ids)


def read_inventory_ids(path: str) -> frozenset[str]:
    """The ``client_id`` column of an inventory file (enforcer/analyst/inventory.py reads and checks it)."""
    from ..analyst.inventory import Inventory
    from ..config import ConfigError

    try:
        ids = Inventory.load(path).client_ids
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    bad = sorted(i for i in ids if parse_client_id(i) != i)
    if bad:
        raise ValueError(f"{path}: client_id {bad[0]!r} is not a ClientID (one lower-case DNS label)")
    return frozenset(ids)


class KnownIds:
    """The accepted ClientIDs; ``ids`` is swapped whole (a frozenset), so the event loop reads it without a lock."""

    def __init__(self, client_ids: str | None = None, inventory: str | None = None) -> None:
        self.files = [(p, read_client_ids) for p in (client_ids,) if p] + [(p, read_inventory_ids) for p in
                                                                            (inventory,) if p]  # fmt: skip
        self.ids: frozenset[str] = frozenset()
        self._stamps: list[tuple[int, int] | None] = [None] * len(self.files)
        self.reloads = 0
        self.failures = 0  # re-reads refused (a bad file): enforcer_dns_encrypted_reloads_total{result="failure"}
        self.reload_if_changed(strict=True)

    def __contains__(self, cid: str) -> bool:
        return cid in self.ids

    def reload_if_changed(self, strict: bool = False) -> bool:
        """Re-read the files when one changed; True when the set was replaced. ``strict`` (start-up): a bad or
        missing file raises ValueError; later the last good set is kept and the problem logged."""
        stamps: list[tuple[int, int] | None] = []
        for path, _reader in self.files:
            try:
                st = os.stat(path)
                stamps.append((st.st_mtime_ns, st.st_size))
            except OSError as exc:
                if strict:
                    raise ValueError(f"{path}: {exc.strerror}") from None
                stamps.append(None)
        if stamps == self._stamps:
            return False
        ids: set[str] = set()
        try:
            for path, reader in self.files:
                ids |= reader(path)
        except (OSError, ValueError) as exc:
            if strict:
                raise ValueError(str(exc)) from None
            log.warning("ClientIDs not reloaded, the last good set (%d ids) is kept: %s", len(self.ids), exc)
            self._stamps = stamps  # do not retry a bad file every second; its next change is read again
            self.failures += 1
            return False
        self._stamps = stamps
        self.ids = frozenset(ids)
        self.reloads += 1
        return True
