"""enforcer/dns/h2fast.py and the header memo of enforcer/dns/h2wire.py: the memo gives what plain hpack decodes,
through table insertions, evictions and size updates, and ``table_neutral`` tells table-changing blocks from the
others (RFC 7541 section 6). Real hpack encoders and decoders on both sides; no network."""

from __future__ import annotations

import random

import pytest
from hpack import Decoder, Encoder

from enforcer.dns.h2fast import MEMO_SIZE, table_neutral
from enforcer.dns.h2wire import H2Server


def _requests(rng: random.Random, n: int) -> list[list[tuple[str, str]]]:
    out = []
    for _ in range(n):
        length = str(rng.randint(40, 49))
        headers = [(":method", "POST"), (":scheme", "https"), (":authority", "127.0.0.1"), (":path", "/dns-query"),
                   ("content-type", "application/dns-message"), ("content-length", length)]  # fmt: skip
        if rng.random() < 0.02:  # a header of its own: inserted into the table, evicting older entries
            headers.append((f"x-{rng.randint(0, 999)}", "v" * rng.randint(1, 200)))
        out.append(headers)
    return out


@pytest.mark.parametrize("sensitive_length", [False, True])
def test_header_memo_decodes_as_hpack_does(sensitive_length: bool) -> None:
    """H2Server's memo of table-neutral blocks (enforcer/dns/h2wire.py) gives what plain hpack decodes, through
    table insertions, evictions and size updates."""
    rng = random.Random(7)
    client = Encoder()
    plain, server = Decoder(), H2Server(10)
    hits = 0
    for i, headers in enumerate(_requests(rng, 2000)):
        if i in (500, 1500):
            client.header_table_size = 256 if i == 500 else 4096  # a size update in the next block
        if sensitive_length:  # as nghttp2 sends content-length: a literal never indexed
            headers = [(k, v, True) if k == "content-length" else (k, v) for k, v in headers]  # type: ignore[misc]
        block = client.encode(headers)
        hits += block in server.memo
        want = {k.decode(): v.decode() for k, v in plain.decode(block, raw=True)
                if k in (b":method", b":path", b"content-type")}  # fmt: skip
        assert server._request_headers(block) == want
    assert hits > 500  # the repeated blocks were answered from the memo
    assert len(server.memo) <= MEMO_SIZE


@pytest.mark.parametrize(
    ("block", "neutral"),
    [
        ("82", True),  # indexed :method GET
        ("8287", True),
        ("ff0f", True),  # indexed, multi-byte index (15 + 127)
        ("0f0d023437", True),  # literal without indexing, indexed name content-length, value "47"
        ("1f0d023437", True),  # never indexed
        ("000178017982", True),  # without indexing, new name "x" value "y", then indexed
        ("5c023437", False),  # incremental indexing (content-length "47"): adds to the table
        ("3fe11f82", False),  # a table size update first
        ("0f0d05", False),  # cut short
        ("", False),
    ],
)
def test_table_neutral(block: str, neutral: bool) -> None:
    assert table_neutral(bytes.fromhex(block)) is neutral
