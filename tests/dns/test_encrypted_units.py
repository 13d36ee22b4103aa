"""The pieces of the encrypted listeners that need no network: ClientID parsing, the known-id files, the flags'
checks (one line each), the DoH request reading and the gate's admission and counting."""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

import pytest

from enforcer.dns.cli import add_arguments
from enforcer.dns.clientid import (
    INVALID,
    KnownIds,
    client_id_from_path,
    client_id_from_sni,
    parse_client_id,
)
from enforcer.dns.doh import dns_request
from enforcer.dns.encrypted import EncryptedLimits, Gate
from enforcer.dns.encrypted_listeners import encrypted_settings


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments("dns", parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("phone-1", "phone-1"), ("PHONE-1", "phone-1"), ("a" * 63, "a" * 63), ("a" * 64, INVALID), ("", INVALID),
     ("a_b", INVALID), ("a.b", INVALID), ("é", INVALID), ("K", "k")],
)  # fmt: skip
def test_parse_client_id(text: str, expected: str) -> None:
    assert parse_client_id(text) == expected


def test_client_id_from_sni_and_path() -> None:
    name = "dns.example.gov"
    assert client_id_from_sni("Phone-1.DNS.example.gov.", name) == "phone-1"
    assert client_id_from_sni("dns.example.gov", name) is None  # the bare server name: no id
    assert client_id_from_sni("other.example", name) is None
    assert client_id_from_sni(None, name) is None
    assert client_id_from_sni("phone-1.dns.example.gov", None) is None  # no --server-name: SNI ids off
    assert client_id_from_sni("a.b.dns.example.gov", name) == INVALID
    assert client_id_from_sni("xdns.example.gov", name) is None  # not a label boundary
    assert client_id_from_path("/dns-query") is None
    assert client_id_from_path("/dns-query/") is None
    assert client_id_from_path("/dns-query/Laptop-2") == "laptop-2"
    assert client_id_from_path("/dns-query/a/b") == INVALID


def test_known_ids_files_reload_and_keep_last_good(tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("# managed phones\nphone-1\n\nLAPTOP-2   # folded\n")
    inventory = tmp_path / "inventory.csv"
    inventory.write_text("device,owner,unit,client_id\nipad,alice,it,tablet-3\n")
    known = KnownIds(str(ids), str(inventory))
    assert known.ids == {"phone-1", "laptop-2", "tablet-3"}
    ids.write_text("phone-1\nbad_id\n")  # a bad line: the last good set stays
    assert known.reload_if_changed() is False and "laptop-2" in known
    ids.write_text("phone-9\n")
    assert known.reload_if_changed() is True and known.ids == {"phone-9", "tablet-3"}
    ids.write_text("ok\nbad_id\n")
    with pytest.raises(ValueError, match=r"ids\.txt:2: 'bad_id' is not a ClientID"):
        KnownIds(str(ids))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dot", "0.0.0.0:853"], "--dot 0.0.0.0:853: beyond loopback an encrypted listener needs --tls-cert"),
        (["--doh", "localhost:443"], "--doh 'localhost:443'"),
        (["--dot", "127.0.0.1:853", "--tls-cert", "x.pem"], "--tls-cert and --tls-key go together"),
        (["--dot", "127.0.0.1:853", "--require-client-id", "--server-name", "d.test"], "--client-ids FILE"),
        (["--dot", "127.0.0.1:853", "--server-name", "bad name"], "--server-name 'bad name'"),
        (["--dot", "127.0.0.1:853", "--tls-idle-timeout", "0"], "--tls-idle-timeout '0': must be between"),
        (["--dot", "127.0.0.1:853", "--doh-max-streams", "x"], "--doh-max-streams 'x': not a number"),
    ],
)
def test_settings_errors_are_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=r"^[^\n]+$") as info:  # one line
        encrypted_settings(_args(*argv))
    assert message in str(info.value)


def test_settings_defaults() -> None:
    assert encrypted_settings(_args()) is None  # no encrypted listener: nothing changes
    s = encrypted_settings(_args("--dot", "127.0.0.1:853", "--doq", "[::1]:853", "--server-name", "DNS.Example.gov."))
    assert s is not None and s.server_name == "dns.example.gov" and s.tls_cert is None
    assert s.addresses == [("dot", "127.0.0.1", 853), ("doq", "::1", 853)]
    assert s.limits == EncryptedLimits()


def test_doh_request_reading() -> None:
    query = bytes.fromhex("0000010000010000000000000377777706676f6f676c6503636f6d0000010001")
    b64 = base64.urlsafe_b64encode(query).rstrip(b"=").decode()
    assert dns_request("GET", f"/dns-query?dns={b64}", {}, b"") == (query, None, 200)
    assert dns_request("GET", f"/dns-query/Phone-1?dns={b64}", {}, b"") == (query, "phone-1", 200)
    post = {"content-type": "application/dns-message"}
    assert dns_request("POST", "/dns-query", post, query) == (query, None, 200)
    assert dns_request("POST", "/dns-query", {"content-type": "text/plain"}, query)[2] == 415
    assert dns_request("POST", "/dns-query", post, b"short")[2] == 400
    assert dns_request("GET", "/dns-query?dns=***", {}, b"")[2] == 400
    assert dns_request("GET", "/resolve", {}, b"")[2] == 404
    assert dns_request("DELETE", "/dns-query", {}, b"")[2] == 405


def test_gate_admission_caps_and_ids() -> None:
    allowed = {"10.0.0.1", "10.0.0.2", "2001:db8::1", "2001:db8::2"}
    gate = Gate(allowed.__contains__, EncryptedLimits(max_connections=3, max_per_source=1))
    assert gate.admit("dot", "10.0.0.1") and not gate.admit("dot", "10.0.0.1")  # per source
    assert not gate.admit("doh", "192.0.2.1")  # outside --allow
    assert gate.admit("doh", "2001:db8::1") and not gate.admit("doh", "2001:db8::2")  # same /64
    assert gate.admit("doq", "10.0.0.2") and not gate.admit("dot", "10.0.0.3")  # global cap (and outside allow)
    counts = {k: v for k, v in gate.events.values.items() if v}
    assert counts == {("dot", "source_limit"): 1, ("doh", "refused"): 1, ("doh", "source_limit"): 1,
                      ("dot", "refused"): 1}  # fmt: skip
    gate.release("dot", "10.0.0.1")
    assert gate.admit("dot", "10.0.0.1") and gate.open == {"dot": 1, "doh": 1, "doq": 1}
    known = KnownIds()
    known.ids = frozenset({"phone-1"})
    strict = Gate(allowed.__contains__, EncryptedLimits(), known=known, require_client_id=True)
    assert strict.admit("dot", "192.0.2.1")  # the ClientID is the access control
    assert strict.client_ok("dot", "phone-1")
    assert not strict.client_ok("dot", None) and not strict.client_ok("dot", "tablet-9")
    assert not Gate(allowed.__contains__, EncryptedLimits()).client_ok("doh", INVALID)  # invalid: always refused
