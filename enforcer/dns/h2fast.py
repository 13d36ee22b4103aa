"""Which HPACK header blocks may be remembered, for DoH's HTTP/2 server (enforcer/dns/h2wire.py).

- ``table_neutral(block)``: a request header block made only of indexed fields and literals kept out of the table
  changes no HPACK table, so it decodes to the same headers as long as the table is unchanged: h2wire decodes it
  once, then looks it up. Any other block (incremental indexing, a table size update) may change the table and
  empties the memo. ``MEMO_SIZE``: the memo's bound.

Why: a DoH client sends the same few request headers on every stream; under dnsperf the pure-Python HPACK decode
was about a third of the CPU per query. (Answers need no encoder: h2wire pre-encodes them without the dynamic
table.)
"""

from __future__ import annotations

MEMO_SIZE = 256


def _integer(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """An HPACK integer (RFC 7541 5.1) at ``pos``: ``(value, next position)``; IndexError when cut short."""
    mask = (1 << prefix_bits) - 1
    value = block[pos] & mask
    pos += 1
    if value == mask:
        shift = 0
        while True:
            byte = block[pos]
            pos += 1
            value += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
    return value, pos


def table_neutral(block: bytes) -> bool:
    """True when decoding ``block`` cannot change the HPACK dynamic table: only indexed fields (RFC 7541 6.1) and
    literals without indexing or never indexed (6.2.2, 6.2.3); no incremental indexing (6.2.1), no size update
    (6.3)."""
    pos, end = 0, len(block)
    try:
        while pos < end:
            first = block[pos]
            if first & 0x80:
                _, pos = _integer(block, pos, 7)
            elif first & 0xE0 == 0:  # 0000xxxx or 0001xxxx: a literal left out of the table
                index, pos = _integer(block, pos, 4)
                strings = 2 if index == 0 else 1  # a new name, then the value
                for _ in range(strings):
                    length, pos = _integer(block, pos, 7)
                    pos += length
            else:
                return False
    except IndexError:
        return False
    return pos == end and end > 0
