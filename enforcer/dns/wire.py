"""DNS wire format by hand, for the hot path: question parsing, reply headers, record walking, truncation.

- ``parse_query(data)``: the common query (one question, uncompressed name, at most an OPT record) -> ``Question``
  in a few microseconds, or None when dnslib must look (``normalize_query`` then rebuilds a canonical packet).
- ``Question``: the parsed fields every link needs (lower-case key without the dot, type, class, where the question
  ends, EDNS payload size and DO bit).
- ``error_reply``/``question_reply``/``truncate``: small replies built from the query's own bytes (REFUSED, FORMERR,
  SERVFAIL, truncated); ``refusal(data)``: the answer to a client outside ``--allow``, decided without parsing.
- ``strip_ecs(data, q)``: the query without an EDNS Client Subnet option (never forwarded: see cache.py).
- ``answer_mismatch(sent, reply, qend)``: why an upstream reply does not answer the query sent (id, QR, opcode,
  question name case-insensitively, type, class), or None; every upstream transport calls it with the ``qend`` the
  chain's parse found (``question_end`` walks the question only for a caller without one).
- ``walk_records(wire)``: offsets of every resource record of a response (for TTL patching in the cache and the
  response-policy checks) without dnslib; raises ``WireError`` on anything malformed. The last walk is kept (the
  forward path walks one answer three times).
- ``read_name(wire, offset)``: a (possibly compressed) name as a lower-case key; strict (pointers only backwards,
  at most ``MAX_POINTER_HOPS``), since response policy must fail closed on a name it cannot read.

Why by hand: dnslib's parse + reply + pack costs 104–131 µs per blocked query, the hand-written path with a
prebuilt template 3.5–3.7 µs (docs/performance.md). dnslib stays for the rare
paths (malformed or unusual queries, see ``normalize_query``).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import dnslib

QTYPE_A = 1
QTYPE_CNAME = 5
QTYPE_SOA = 6
QTYPE_AAAA = 28
QTYPE_OPT = 41
QTYPE_SVCB = 64
QTYPE_HTTPS = 65
CLASS_IN = 1

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5

DEFAULT_UDP_SIZE = 512  # without EDNS (RFC 1035)
MAX_UDP_SIZE = 1232  # what we advertise and the most we send over UDP (DNS flag day 2020)
EDE_OPTION = 15  # RFC 8914
EDE_BLOCKED = 15
EDE_OTHER = 0
EDE_NO_REACHABLE_AUTHORITY = 22  # SERVFAIL: no upstream answered in time
EDE_NETWORK_ERROR = 23  # SERVFAIL: the upstreams failed on the network (refused, unreachable, reset)
ECS_OPTION = 8  # RFC 7871 EDNS Client Subnet
# A real name needs one or two pointers; a long chain only exists to lose a parser (glibc follows far more).
MAX_POINTER_HOPS = 64

_U16 = struct.Struct("!H")
_RR = struct.Struct("!HHIH")  # type, class, ttl, rdlength


class WireError(ValueError):
    """A malformed DNS message."""


class Question(NamedTuple):
    key: str  # lower-case name without trailing dot ("" for the root); dots inside labels escaped as "\."
    qtype: int
    qclass: int
    qend: int  # offset just after the question section (the question is data[12:qend])
    edns: int  # the client's EDNS UDP payload size (512..MAX_UDP_SIZE), 0 when it sent no OPT record
    do: bool  # DNSSEC OK bit


def _labels_key(data: bytes, i: int) -> tuple[str, int] | None:
    """Read an uncompressed name at ``i``; returns (key, offset after the name) or None if compressed/invalid."""
    n = len(data)
    labels: list[bytes] = []
    total = 0
    while True:
        if i >= n:
            return None
        length = data[i]
        if length == 0:
            i += 1
            break
        if length > 63:
            return None  # compression pointer or extended label type: dnslib's business
        i += 1
        label = data[i : i + length]
        if len(label) != length:
            return None
        labels.append(label)
        total += length + 1
        i += length
    if total > 255:
        return None
    raw = b".".join(labels)
    key = raw.decode("latin-1")
    if key.count(".") != len(labels) - 1 and labels:
        key = ".".join(lab.decode("latin-1").replace(".", "\\.") for lab in labels)
    # DNS folds ASCII case only (RFC 4343).
    key = key.lower() if key.isascii() else "".join(c.lower() if c < "\x80" else c for c in key)
    return key, i


_MEMO: dict[bytes, tuple[str, int, int]] = {}
MEMO_SIZE = 20_000


def parse_query(data: bytes) -> Question | None:  # noqa: C901 (per query, no calls: docs/performance.md)
    """The fast path: a standard query with one uncompressed question and at most an OPT record, nothing else.

    Questions are memoised by their wire bytes (name, type, class): the same question asked again costs a find, a
    slice and a dict look-up instead of a label walk. Only questions whose name ends at the first zero byte are
    memoised, so equal bytes always mean an equal parse. The memo is cleared when full (bounded memory).
    """
    if len(data) < 17:
        return None
    if data[4:10] != b"\x00\x01\x00\x00\x00\x00" or data[2] & 0xF8:  # QR=0, opcode QUERY, 1 question, no answers
        return None
    arcount = (data[10] << 8) | data[11]
    if arcount > 1:
        return None
    z = data.find(0, 12)
    if z < 0:
        return None
    qend = z + 5
    if qend > len(data):
        return None
    hit = _MEMO.get(data[12:qend])
    if hit is not None:
        key, qtype, qclass = hit
    else:
        parsed = _labels_key(data, 12)
        if parsed is None:
            return None
        key, i = parsed
        qend = i + 4
        if qend > len(data):
            return None
        qtype = (data[i] << 8) | data[i + 1]
        qclass = (data[i + 2] << 8) | data[i + 3]
        if i == z + 1:
            if len(_MEMO) >= MEMO_SIZE:
                _MEMO.clear()
            _MEMO[data[12:qend]] = (key, qtype, qclass)
    if arcount == 0:
        if qend != len(data):
            return None
        return Question(key, qtype, qclass, qend, 0, False)
    # One additional record: it must be a well-formed OPT (version 0) ending the packet.
    j = qend
    if len(data) < j + 11 or data[j] != 0 or data[j + 1] != 0 or data[j + 2] != QTYPE_OPT:
        return None
    if data[j + 6] != 0:  # EDNS version: BADVERS is handled on the slow path
        return None
    rdlen = (data[j + 9] << 8) | data[j + 10]
    if j + 11 + rdlen != len(data):
        return None
    size = (data[j + 3] << 8) | data[j + 4]
    # Capped at what we send over UDP at most: a client's 65,535 made a 41-byte query reflect a 12,810-byte answer.
    return Question(key, qtype, qclass, qend, min(max(size, DEFAULT_UDP_SIZE), MAX_UDP_SIZE), bool(data[j + 7] & 0x80))


class Normalized(NamedTuple):
    data: bytes | None  # a canonical query packet (parse_query accepts it), or None when ``reply`` is the answer
    reply: bytes | None  # a ready error reply (FORMERR, NOTIMP, BADVERS), or None to drop the packet


def normalize_query(data: bytes) -> Normalized:
    """The slow path for packets ``parse_query`` declined: parse with dnslib, rebuild a canonical query.

    Responses (QR=1) and packets without a readable header are dropped (never answer a response: reflection loops).
    """
    if len(data) < 12:
        return Normalized(None, None)
    if data[2] & 0x80:
        return Normalized(None, None)
    opcode = (data[2] >> 3) & 0x0F
    if opcode != 0:
        return Normalized(None, error_reply(data, RCODE_NOTIMP))
    try:
        record = dnslib.DNSRecord.parse(data)
    except Exception:  # dnslib raises many types on bad input
        return Normalized(None, error_reply(data, RCODE_FORMERR))
    if len(record.questions) != 1 or record.rr or record.auth:
        return Normalized(None, error_reply(data, RCODE_FORMERR))
    opts = [r for r in record.ar if r.rtype == QTYPE_OPT]
    if len(opts) > 1:
        return Normalized(None, error_reply(data, RCODE_FORMERR))
    q = record.questions[0]
    try:
        labels = [bytes(lab) for lab in q.qname.label]
        if any(len(lab) == 0 or len(lab) > 63 for lab in labels) or sum(len(lab) + 1 for lab in labels) > 255:
            raise WireError("bad name")
        out = bytearray(data[:4])
        out += b"\x00\x01\x00\x00\x00\x00"
        out += b"\x00\x01" if opts else b"\x00\x00"
        for lab in labels:
            out.append(len(lab))
            out += lab
        out.append(0)
        out += struct.pack("!HH", q.qtype, q.qclass)
        if opts:
            opt = opts[0]
            version = (opt.ttl >> 16) & 0xFF
            if version != 0:
                return Normalized(None, badvers_reply(data))
            rdata = b"".join(struct.pack("!HH", o.code, len(o.data)) + bytes(o.data) for o in (opt.rdata or []))
            out += b"\x00" + struct.pack("!HHIH", QTYPE_OPT, opt.rclass, opt.ttl & 0xFFFF, len(rdata)) + rdata
    except Exception:
        return Normalized(None, error_reply(data, RCODE_FORMERR))
    return Normalized(bytes(out), None)


def header_flags(data: bytes, rcode: int, *, aa: bool = False, tc: bool = False) -> bytes:
    """Reply flags for a query: QR, the query's opcode and RD and CD, RA, the rcode."""
    b2 = 0x80 | (data[2] & 0x79) | (0x04 if aa else 0) | (0x02 if tc else 0)
    b3 = 0x80 | (data[3] & 0x10) | (rcode & 0x0F)
    return bytes((b2, b3))


def error_reply(data: bytes, rcode: int) -> bytes:
    """Header-only reply (no question): for packets whose question cannot be trusted."""
    return data[:2] + header_flags(data, rcode) + b"\x00\x00\x00\x00\x00\x00\x00\x00"


def refusal(data: bytes) -> bytes | None:
    """For a client outside ``--allow``: a header-only REFUSED (12 bytes, never larger than what it sent), or None
    (silence) for what is not a query header. Only the first 3 bytes are looked at, whatever follows: the client
    learns nothing about how its packet would have been read and costs no parse."""
    if len(data) < 12 or data[2] & 0x80:  # never answer a response (reflection loops)
        return None
    return error_reply(data, RCODE_REFUSED)


def strip_ecs(data: bytes, q: Question) -> bytes:
    """``data`` (a query ``parse_query`` accepted) without EDNS Client Subnet options; the same object when none.

    Why: an answer scoped to one client's subnet must not reach another client through the cache, and the cache is
    keyed on the question only. Not forwarding ECS at all also keeps clients' subnets from the upstream.
    """
    j = q.qend
    if not q.edns or len(data) <= j + 11:
        return data
    rdlen = (data[j + 9] << 8) | data[j + 10]
    if not rdlen:
        return data
    i, end = j + 11, j + 11 + rdlen
    kept = bytearray()
    found = False
    while i + 4 <= end:
        code, length = struct.unpack_from("!HH", data, i)
        if code == ECS_OPTION:
            found = True
        else:
            kept += data[i : i + 4 + length]
        i += 4 + length
    if not found:
        return data
    return data[: j + 9] + _U16.pack(len(kept)) + bytes(kept)


def answer_mismatch(sent: bytes, reply: bytes, qend: int | None = None) -> str | None:
    """Why ``reply`` is not the answer to query ``sent`` (as sent: its id), or None when it is.

    Checked: the id, the QR bit, the opcode, one question with the same name (ASCII case folded, RFC 4343), type and
    class. A reply without the question (some servers' header-only errors) is not an answer either: the forwarder
    tries the next upstream.
    """
    if len(reply) < 12:
        return "short reply"
    if reply[:2] != sent[:2]:
        return "id differs"
    if not reply[2] & 0x80:
        return "not a response (QR=0)"
    if (reply[2] ^ sent[2]) & 0x78:
        return "opcode differs"
    if reply[4:6] != b"\x00\x01":
        return "not exactly one question"
    end = question_end(sent) if qend is None else qend
    if not end or len(reply) < end:
        return "question differs"
    # Lower-case the name only: bytes.lower() would also fold a type or class byte in 0x41-0x5A (HTTPS is 65).
    if reply[12 : end - 4].lower() != sent[12 : end - 4].lower() or reply[end - 4 : end] != sent[end - 4 : end]:
        return "question differs"
    return None


def question_end(data: bytes) -> int:
    """Offset after the (uncompressed) question of a message, or 0."""
    i, n = 12, len(data)
    while i < n:
        length = data[i]
        if length == 0:
            return i + 5 if i + 5 <= n else 0
        if length > 63:
            return 0
        i += length + 1
    return 0


def opt_record(size: int = MAX_UDP_SIZE, options: bytes = b"", do: bool = False, ext_rcode: int = 0) -> bytes:
    return b"\x00" + struct.pack("!HHBBHH", QTYPE_OPT, size, ext_rcode, 0, 0x8000 if do else 0, len(options)) + options


def badvers_reply(data: bytes) -> bytes:
    """RFC 6891: an unknown EDNS version gets BADVERS (extended rcode 16 = upper bits 1, lower bits 0)."""
    return data[:2] + header_flags(data, 0) + b"\x00\x00\x00\x00\x00\x00\x00\x01" + opt_record(ext_rcode=1)


def ede_option(code: int, text: str = "") -> bytes:
    """An EDNS Extended DNS Error option (RFC 8914): INFO-CODE and EXTRA-TEXT (UTF-8, at most 200 bytes here)."""
    extra = text.encode()[:200]
    return struct.pack("!HHH", EDE_OPTION, 2 + len(extra), code) + extra


def question_reply(data: bytes, q: Question, rcode: int, *, tc: bool = False, options: bytes = b"") -> bytes:
    """Reply carrying only the question (+ OPT when the client used EDNS): REFUSED, SERVFAIL, truncated.

    ``options``: EDNS options for the OPT record (an EDE saying why), sent only to a client that used EDNS."""
    if q.edns:
        return (
            data[:2]
            + header_flags(data, rcode, tc=tc)
            + b"\x00\x01\x00\x00\x00\x00\x00\x01"
            + data[12 : q.qend]
            + opt_record(options=options)
        )
    return data[:2] + header_flags(data, rcode, tc=tc) + b"\x00\x01\x00\x00\x00\x00\x00\x00" + data[12 : q.qend]


def truncate(reply: bytes, data: bytes, q: Question) -> bytes:
    """The reply cut down to header + question with TC set (the client retries over TCP)."""
    return question_reply(data, q, reply[3] & 0x0F, tc=True)


# -- response walking ---------------------------------------------------------------------------------------------
def skip_name(wire: bytes, i: int) -> int:
    """Offset after a (possibly compressed) name starting at ``i``."""
    n = len(wire)
    while True:
        if i >= n:
            raise WireError("name runs past the end")
        length = wire[i]
        if length == 0:
            return i + 1
        if length & 0xC0 == 0xC0:
            if i + 1 >= n:
                raise WireError("truncated pointer")
            return i + 2
        if length & 0xC0:
            raise WireError("unknown label type")
        i += length + 1


def read_name(wire: bytes, i: int) -> str:
    """A (possibly compressed) name as a lower-case key without trailing dot.

    Strict, because a name that is skipped is a name that is not judged: every pointer must point backwards (RFC
    1035 4.1.4: "a prior occurrence") and past the header, and at most ``MAX_POINTER_HOPS`` are followed; anything
    else raises ``WireError`` (forward pointers, loops, long chains), and the caller fails closed.
    """
    labels: list[str] = []
    n = len(wire)
    hops = 0
    total = 0
    while True:
        if i >= n:
            raise WireError("name runs past the end")
        length = wire[i]
        if length == 0:
            break
        if length & 0xC0 == 0xC0:
            if i + 1 >= n:
                raise WireError("truncated pointer")
            hops += 1
            if hops > MAX_POINTER_HOPS:
                raise WireError("compression pointer chain too long")
            target = ((length & 0x3F) << 8) | wire[i + 1]
            if target >= i or target < 12:
                raise WireError("compression pointer not backwards into the message")
            i = target
            continue
        if length & 0xC0:
            raise WireError("unknown label type")
        label = wire[i + 1 : i + 1 + length]
        if len(label) != length:
            raise WireError("label runs past the end")
        total += length + 1
        if total > 255:
            raise WireError("name too long")
        labels.append(label.decode("latin-1").replace(".", "\\."))
        i += length + 1
    key = ".".join(labels)
    return key.lower() if key.isascii() else "".join(c.lower() if c < "\x80" else c for c in key)


class Record(NamedTuple):
    section: int  # 0 answer, 1 authority, 2 additional
    name_at: int
    rtype: int
    ttl_at: int  # offset of the 4-byte TTL
    ttl: int
    rdata_at: int
    rdlen: int


class Response(NamedTuple):
    rcode: int
    tc: bool
    qend: int
    records: list[Record]


# (reply, Response) of the last walk, as one tuple (replaced whole: never a reply paired with another's walk). The
# reference keeps that reply alive, so its identity cannot be reused by another object.
_LAST_WALK: list[tuple[bytes, Response] | None] = [None]


def walk_records(wire: bytes) -> Response:
    """Every record's position in a response with exactly one question. Raises WireError when malformed.

    The walk of the last reply is kept: response policy, the TTL clamp and the cache store each walk the same
    upstream answer in turn (the same bytes object, immutable), so the second and third walks are an identity test.
    Callers must not change the returned records."""
    last = _LAST_WALK[0]
    if last is not None and wire is last[0]:
        return last[1]
    resp = _walk_records(wire)
    _LAST_WALK[0] = (wire, resp)
    return resp


def _walk_records(wire: bytes) -> Response:
    if len(wire) < 12:
        raise WireError("short header")
    qd, an, ns, ar = struct.unpack_from("!HHHH", wire, 4)
    if qd != 1:
        raise WireError("expected one question")
    i = skip_name(wire, 12) + 4
    if i > len(wire):
        raise WireError("truncated question")
    qend = i
    records: list[Record] = []
    for section, count in ((0, an), (1, ns), (2, ar)):
        for _ in range(count):
            name_at = i
            i = skip_name(wire, i)
            if i + 10 > len(wire):
                raise WireError("truncated record")
            rtype, _rclass, ttl, rdlen = _RR.unpack_from(wire, i)
            rdata_at = i + 10
            if rdata_at + rdlen > len(wire):
                raise WireError("rdata runs past the end")
            records.append(Record(section, name_at, rtype, i + 4, ttl, rdata_at, rdlen))
            i = rdata_at + rdlen
    if i != len(wire):
        raise WireError("trailing bytes")
    return Response(wire[3] & 0x0F, bool(wire[2] & 0x02), qend, records)


def encode_name(name: str) -> bytes:
    """A presentation name (no escapes) in uncompressed wire form."""
    out = bytearray()
    for label in name.strip(".").split("."):
        if label:
            raw = label.encode("ascii")
            out.append(len(raw))
            out += raw
    out.append(0)
    return bytes(out)


QTYPE_NAMES: dict[int, str] = {int(k): str(v) for k, v in dnslib.QTYPE.forward.items()}


def qtype_name(qtype: int) -> str:
    return QTYPE_NAMES.get(qtype) or f"TYPE{qtype}"
