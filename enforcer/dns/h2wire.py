"""A hand-written HTTP/2 server connection (RFC 9113) for what DoH uses, sans-I/O: bytes in, requests and bytes out.

- ``H2Server(max_streams)``: ``preface()`` is what the server sends first (SETTINGS, and a connection
  WINDOW_UPDATE so clients never wait on our receive window); ``receive(data)`` parses the frames of one read and
  returns the requests it completed as ``(stream_id, headers, body)`` (``headers``: only ``:method``, ``:path`` and
  ``content-type``, as ``str``); what the protocol itself must answer (SETTINGS ACK, PING ACK, WINDOW_UPDATE,
  RST_STREAM REFUSED_STREAM beyond ``max_streams`` streams open or still being answered after the client reset
  them) accumulates in ``out`` (``take()`` returns and empties it).
  ``respond(stream_id, status, body, max_age)``: one answer as bytes, HEADERS + DATA together (the caller writes it
  as one TLS record), or ``b""`` when the stream was reset; when the peer's flow-control windows cannot take the
  whole body, what fits goes now and the rest when a WINDOW_UPDATE opens them (then it comes out of ``take()``).
- A connection error raises ``H2Error(code)``; ``goaway(code)`` is the GOAWAY frame to send before closing:
  a bad preface, a frame on the wrong stream, a bad SETTINGS/PING/WINDOW_UPDATE size or value, a frame larger than
  16,384 bytes, CONTINUATION out of sequence, an HPACK block that does not decode (COMPRESSION_ERROR), a header
  block over ``MAX_HEADER_BLOCK``, DATA beyond our window (FLOW_CONTROL_ERROR), a client PUSH_PROMISE.
  ``stream_limit`` counts refused streams, ``too_large`` the bodies over ``MAX_BODY`` answered 413 (by this
  module, from ``receive``); ``goaway_received`` is set when the client said it is leaving.
- PRIORITY frames and the priority fields of HEADERS are read and ignored, padding is removed, unknown frame types
  and settings are ignored (RFC 9113 4.1, 6.5.2). Request trailers are decoded (the HPACK table must follow) and
  dropped.

Why not ``h2``: its general state machine (an object per frame, per-stream state machines, event objects, header
validation) cost ~200 us of CPU per DoH query, four times what answering the query costs (docs/performance.md,
"Encrypted DNS"). A DoH server sees a handful of frame types and answers with a few fixed headers, so the
response header blocks are pre-encoded (static-table indexes and literals never added to the table: our HPACK
encoder state never changes; each block made once per status, length and max-age) and only the request side runs
an HPACK decoder (the ``hpack`` package that ``h2`` depends on; a repeated table-neutral block is decoded once,
see enforcer/dns/h2fast.py). tests/dns/test_doh_h2wire.py drives this with ``h2``'s client state machine as the
reference.
"""

from __future__ import annotations

import struct
from typing import Any

from hpack import Decoder, HPACKError, InvalidTableSizeError, OversizedHeaderListError

from .h2fast import MEMO_SIZE, table_neutral

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_FRAME = 16_384  # SETTINGS_MAX_FRAME_SIZE we accept (the default; never raised)
MAX_HEADER_BLOCK = 16_384  # a request's header block, CONTINUATIONs included; also SETTINGS_MAX_HEADER_LIST_SIZE
MAX_BODY = 16_384  # a DNS query; a longer request body gets 413
CONNECTION_WINDOW = 1 << 24  # our receive window for the connection, topped up when half is used
MAX_WINDOW = 2**31 - 1

# Frame types and flags (RFC 9113 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

# Error codes (RFC 9113 7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x8, 0x9
ENHANCE_YOUR_CALM = 0xB

# Settings (RFC 9113 6.5.2).
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE = 1, 2, 3, 4
S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 5, 6

_HEAD = struct.Struct("!I")  # read as 4 bytes: 3 of length and the type
_FRAME = struct.Struct("!HBBBI")  # written: length high 16 bits, low 8 bits, type, flags, stream id
_WANTED = {b":method": ":method", b":path": ":path", b"content-type": "content-type"}


class H2Error(Exception):
    """A connection error: send ``goaway(code)`` and close."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _FRAME.pack(n >> 8, n & 0xFF, kind, flags, stream_id) + payload


def _literal(name_index: int, value: bytes) -> bytes:
    """An HPACK literal header field never added to the table (RFC 7541 6.2.2), the name from the static table."""
    assert len(value) < 127
    head = bytes([name_index]) if name_index < 15 else bytes([0x0F, name_index - 15])
    return head + bytes([len(value)]) + value


# :status from the static table where it has the code (index 8: 200, 12: 400, 13: 404, 14: 500), else a literal.
_STATUS = {200: b"\x88", 400: b"\x8c", 404: b"\x8d", 500: b"\x8e"}
_CONTENT_TYPE = _literal(31, b"application/dns-message")


def status_field(status: int) -> bytes:
    field = _STATUS.get(status)
    return field if field is not None else _literal(8, str(status).encode())


def response_block(status: int, length: int, max_age: int | None) -> bytes:
    """The HPACK block of one answer: ``:status``, ``content-length`` and, for a 200, ``content-type`` and
    ``cache-control: max-age``. Nothing enters either side's dynamic table."""
    block = status_field(status) + _literal(28, str(length).encode())
    if max_age is not None:
        block += _CONTENT_TYPE + _literal(24, b"max-age=%d" % max_age)
    return block


class _Stream:
    __slots__ = ("body", "complete", "headers", "pending", "window")

    def __init__(self, headers: dict[str, str], window: int) -> None:
        self.headers = headers
        self.body = bytearray()
        self.window = window  # what we may still send on it (the peer's stream window)
        self.pending = b""  # answer bytes that did not fit the windows yet
        self.complete = False  # the request is whole (END_STREAM seen): the stream waits for our answer only


class H2Server:
    """One server-side HTTP/2 connection (see the module docstring)."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self.decoder = Decoder()
        self.memo: dict[bytes, dict[str, str]] = {}  # table-neutral header blocks -> their headers
        self.decoder.max_header_list_size = MAX_HEADER_BLOCK
        self.decoder.max_allowed_table_size = 4096  # we never announce another SETTINGS_HEADER_TABLE_SIZE
        self.buf = bytearray()
        self.out: list[bytes] = []
        self.streams: dict[int, _Stream] = {}
        # Streams the client reset after their request was handed out, still being answered: they count against
        # max_streams until ``respond`` (or ``done``), or a client resetting each request at once (HTTP/2 "rapid
        # reset") would have any number of queries in flight on one connection.
        self.working: set[int] = set()
        self.last_stream = 0  # the highest stream id the client opened
        self.preface_seen = False
        self.settings_seen = False
        self.continuing: tuple[int, int, bytearray] | None = None  # (stream, HEADERS flags, block so far)
        self.send_window = 65_535  # connection window the peer gave us
        self.initial_window = 65_535  # the peer's SETTINGS_INITIAL_WINDOW_SIZE
        self.max_frame = MAX_FRAME  # the peer's SETTINGS_MAX_FRAME_SIZE (what our DATA frames may carry)
        self.received = 0  # DATA bytes taken since our last connection WINDOW_UPDATE
        self.stream_limit = 0  # streams refused beyond max_streams
        self.too_large = 0  # requests answered 413 (a body over MAX_BODY)
        self.goaway_received = False
        self.blocked: list[int] = []  # streams with ``pending`` bytes, in answer order
        self.blocks: dict[tuple[int, int, int | None], bytes] = {}  # response header blocks made so far

    def preface(self) -> bytes:
        settings = struct.pack("!HIHIHI", S_MAX_CONCURRENT_STREAMS, self.max_streams, S_MAX_HEADER_LIST_SIZE,
                               MAX_HEADER_BLOCK, S_ENABLE_PUSH, 0)  # fmt: skip
        return frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, _HEAD.pack(CONNECTION_WINDOW - 65_535))

    def goaway(self, code: int) -> bytes:
        return frame(GOAWAY, 0, 0, struct.pack("!II", self.last_stream, code))

    def take(self) -> list[bytes]:
        out, self.out = self.out, []
        return out

    # --- input ------------------------------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
        """Parse ``data`` (what one read gave); the completed requests. Raises ``H2Error`` on a connection error."""
        if self.buf:  # the rest of a frame cut by the previous read
            self.buf += data
            buf = bytes(self.buf)
            self.buf.clear()
        else:  # the common case: parsed from the read's own bytes, no copy
            buf = data
        pos = 0
        if not self.preface_seen:
            if not self._preface(buf):
                return []
            pos = len(PREFACE)
        done: list[tuple[int, dict[str, str], bytes]] = []
        end = len(buf)
        unpack = _HEAD.unpack_from
        while end - pos >= 9:
            head = unpack(buf, pos)[0]
            length = head >> 8
            if length > MAX_FRAME:
                raise H2Error(FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE")
            if end - pos - 9 < length:
                break
            kind = head & 0xFF
            flags = buf[pos + 4]
            stream_id = unpack(buf, pos + 5)[0] & 0x7FFFFFFF
            payload = buf[pos + 9 : pos + 9 + length]
            pos += 9 + length
            if self.continuing is not None and kind != CONTINUATION:
                raise H2Error(PROTOCOL_ERROR, "a header block was interrupted")
            if not self.settings_seen:
                if kind != SETTINGS or flags & ACK:
                    raise H2Error(PROTOCOL_ERROR, "the client preface must start with SETTINGS")
                self.settings_seen = True
            if kind == HEADERS:
                self._headers(stream_id, flags, payload, done)
            elif kind == DATA:
                self._data(stream_id, flags, payload, done)
            elif kind == CONTINUATION:
                self._continuation(stream_id, flags, payload, done)
            else:
                self._control(kind, flags, stream_id, payload)
        if pos < end:
            self.buf += buf[pos:]
        return done

    def _preface(self, buf: bytes) -> bool:
        """True when ``buf`` starts with the client preface; False when it may still (kept for the next read)."""
        if len(buf) < len(PREFACE):
            if not PREFACE.startswith(buf):
                raise H2Error(PROTOCOL_ERROR, "not the HTTP/2 connection preface")
            self.buf += buf
            return False
        if buf[: len(PREFACE)] != PREFACE:
            raise H2Error(PROTOCOL_ERROR, "not the HTTP/2 connection preface")
        self.preface_seen = True
        return True

    def _control(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        """SETTINGS, WINDOW_UPDATE, PING, RST_STREAM, PRIORITY, GOAWAY, PUSH_PROMISE; other types are ignored."""
        if kind == SETTINGS:
            self._settings(stream_id, flags, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == PING:
            if stream_id or len(payload) != 8:
                raise H2Error(FRAME_SIZE_ERROR if len(payload) != 8 else PROTOCOL_ERROR, "bad PING")
            if not flags & ACK:
                self.out.append(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if not stream_id or len(payload) != 4:
                raise H2Error(FRAME_SIZE_ERROR if len(payload) != 4 else PROTOCOL_ERROR, "bad RST_STREAM")
            self._idle_check(stream_id)
            stream = self.streams.pop(stream_id, None)
            if stream is not None and stream.complete and stream_id not in self.blocked:
                self.working.add(stream_id)
        elif kind == PRIORITY:
            if not stream_id:
                raise H2Error(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                self.out.append(frame(RST_STREAM, 0, stream_id, _HEAD.pack(FRAME_SIZE_ERROR)))
        elif kind == GOAWAY:
            if stream_id:
                raise H2Error(PROTOCOL_ERROR, "GOAWAY on a stream")
            self.goaway_received = True
        elif kind == PUSH_PROMISE:
            raise H2Error(PROTOCOL_ERROR, "a client may not push")
        # other frame types: ignored (RFC 9113 4.1)

    def _idle_check(self, stream_id: int) -> None:
        if stream_id > self.last_stream and stream_id not in self.streams:
            raise H2Error(PROTOCOL_ERROR, "frame on an idle stream")

    def _headers(
        self, stream_id: int, flags: int, payload: bytes, done: list[tuple[int, dict[str, str], bytes]]
    ) -> None:
        if not stream_id:
            raise H2Error(PROTOCOL_ERROR, "HEADERS on stream 0")
        start, stop = 0, len(payload)
        if flags & PADDED:
            if not payload:
                raise H2Error(FRAME_SIZE_ERROR, "padded HEADERS without a pad length")
            start, stop = 1, stop - payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if stop < start:
            raise H2Error(PROTOCOL_ERROR, "padding longer than the frame")
        block = payload[start:stop]
        if flags & END_HEADERS:
            self._header_block(stream_id, flags, block, done)
        else:
            self.continuing = (stream_id, flags, bytearray(block))

    def _continuation(
        self, stream_id: int, flags: int, payload: bytes, done: list[tuple[int, dict[str, str], bytes]]
    ) -> None:
        if self.continuing is None or self.continuing[0] != stream_id:
            raise H2Error(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        block = self.continuing[2]
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise H2Error(ENHANCE_YOUR_CALM, "header block over the limit")
        if flags & END_HEADERS:
            head_flags = self.continuing[1]
            self.continuing = None
            self._header_block(stream_id, head_flags, bytes(block), done)

    def _decode(self, block: bytes) -> Any:
        try:
            headers: Any = self.decoder.decode(block, raw=True)
        except (OversizedHeaderListError, InvalidTableSizeError, HPACKError) as exc:
            raise H2Error(COMPRESSION_ERROR, f"HPACK: {exc}") from None
        except (IndexError, ValueError, UnicodeError) as exc:
            raise H2Error(COMPRESSION_ERROR, f"HPACK: {exc!r}") from None
        return headers

    def _request_headers(self, block: bytes) -> dict[str, str]:
        """The wanted headers of a header block. Every block is decoded (the HPACK table must follow each one, even
        a refused stream's), except a repeat of a table-neutral block: it cannot change the table, so it gives the
        same headers while the table is unchanged (``memo``, emptied by any other block)."""
        headers = self.memo.get(block)
        if headers is not None:
            return headers
        headers = {}
        for name, value in self._decode(block):
            key = _WANTED.get(name)
            if key is not None:
                headers[key] = value.decode("latin-1")
        if not table_neutral(block):
            self.memo.clear()  # the block may have added to or resized the table
        elif len(self.memo) < MEMO_SIZE:
            self.memo[block] = headers
        return headers

    def _header_block(
        self, stream_id: int, flags: int, block: bytes, done: list[tuple[int, dict[str, str], bytes]]
    ) -> None:
        headers = self._request_headers(block)  # shared with the memo: read, never changed
        stream = self.streams.get(stream_id)
        if stream is not None or stream_id <= self.last_stream:  # trailers, or a stream already closed
            if stream is None or stream.complete:
                raise H2Error(STREAM_CLOSED, "HEADERS on a closed stream")
            if not flags & END_STREAM:
                raise H2Error(PROTOCOL_ERROR, "trailers without END_STREAM")
            self._complete(stream_id, stream, done)
            return
        if not stream_id & 1:
            raise H2Error(PROTOCOL_ERROR, "a client stream id must be odd")
        self.last_stream = stream_id
        if self.goaway_received:
            return
        if len(self.streams) + len(self.working) >= self.max_streams:
            self.stream_limit += 1
            self.out.append(frame(RST_STREAM, 0, stream_id, _HEAD.pack(REFUSED_STREAM)))
            return
        stream = _Stream(headers, self.initial_window)
        self.streams[stream_id] = stream
        if flags & END_STREAM:
            self._complete(stream_id, stream, done)

    def _complete(self, stream_id: int, stream: _Stream, done: list[tuple[int, dict[str, str], bytes]]) -> None:
        stream.complete = True
        done.append((stream_id, stream.headers, bytes(stream.body)))
        stream.body = bytearray()

    def _data(self, stream_id: int, flags: int, payload: bytes, done: list[tuple[int, dict[str, str], bytes]]) -> None:
        if not stream_id:
            raise H2Error(PROTOCOL_ERROR, "DATA on stream 0")
        self._idle_check(stream_id)
        size = len(payload)  # padding included: flow control counts the whole frame (RFC 9113 6.1)
        self.received += size
        if self.received > CONNECTION_WINDOW:
            raise H2Error(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        if self.received >= CONNECTION_WINDOW // 2:
            self.out.append(frame(WINDOW_UPDATE, 0, 0, _HEAD.pack(self.received)))
            self.received = 0
        if flags & PADDED:
            if not payload or payload[0] >= size:
                raise H2Error(PROTOCOL_ERROR, "padding longer than the frame")
            payload = payload[1 : size - payload[0]]
        stream = self.streams.get(stream_id)
        if stream is None or stream.complete:
            if stream is None:
                return  # a stream we reset or refused: its data is dropped (counted above)
            raise H2Error(STREAM_CLOSED, "DATA after END_STREAM")
        stream.body += payload
        if len(stream.body) > MAX_BODY:  # 413 at once, then RST_STREAM NO_ERROR: the rest is not wanted (8.1)
            self.too_large += 1
            self.out.append(self.respond(stream_id, 413, b"") + frame(RST_STREAM, 0, stream_id, _HEAD.pack(NO_ERROR)))
            return
        if flags & END_STREAM:
            self._complete(stream_id, stream, done)
        # No stream WINDOW_UPDATE: a body is at most MAX_BODY, far inside the initial 65,535-byte stream window.

    def _settings(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id:
            raise H2Error(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise H2Error(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise H2Error(FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        for i in range(0, len(payload), 6):
            key, value = struct.unpack_from("!HI", payload, i)
            if key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise H2Error(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large")
                delta = value - self.initial_window
                self.initial_window = value
                for stream in self.streams.values():  # RFC 9113 6.9.2: open streams move by the difference
                    stream.window += delta
                    if stream.window > MAX_WINDOW:
                        raise H2Error(FLOW_CONTROL_ERROR, "a stream window overflowed")
            elif key == S_MAX_FRAME_SIZE:
                if not MAX_FRAME <= value <= 2**24 - 1:
                    raise H2Error(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                self.max_frame = value
            elif key == S_ENABLE_PUSH and value > 1:
                raise H2Error(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH not 0 or 1")
            # HEADER_TABLE_SIZE: our blocks never use the dynamic table, so any size suits them (RFC 7541 4.2).
        self.out.append(frame(SETTINGS, ACK, 0))
        self._unblock()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2Error(FRAME_SIZE_ERROR, "WINDOW_UPDATE of another size than 4")
        increment = _HEAD.unpack(payload)[0] & 0x7FFFFFFF
        if not stream_id:
            if not increment:
                raise H2Error(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise H2Error(FLOW_CONTROL_ERROR, "the connection window overflowed")
        else:
            self._idle_check(stream_id)
            stream = self.streams.get(stream_id)
            if stream is None:
                return  # a stream already closed: allowed (RFC 9113 6.9)
            if not increment:
                self.streams.pop(stream_id, None)
                self.out.append(frame(RST_STREAM, 0, stream_id, _HEAD.pack(PROTOCOL_ERROR)))
                return
            stream.window += increment
            if stream.window > MAX_WINDOW:
                self.streams.pop(stream_id, None)
                self.out.append(frame(RST_STREAM, 0, stream_id, _HEAD.pack(FLOW_CONTROL_ERROR)))
                return
        self._unblock()

    # --- output -----------------------------------------------------------------------------------------------

    def respond(self, stream_id: int, status: int, body: bytes, max_age: int | None = None) -> bytes:
        """One answer: HEADERS (+ DATA) as bytes to write in one go; ``b""`` when the stream is gone. ``max_age``:
        a 200's ``cache-control``. A body the windows cannot take whole leaves in parts (``take()``)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            self.working.discard(stream_id)
            return b""
        n = len(body)
        key = (status, n, max_age if status == 200 else None)
        block = self.blocks.get(key)
        if block is None:
            if len(self.blocks) >= MEMO_SIZE:
                self.blocks.clear()
            block = self.blocks[key] = response_block(*key)
        if not n:
            del self.streams[stream_id]
            return frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block)
        if n <= self.send_window and n <= stream.window and n <= self.max_frame and not self.blocked:
            self.send_window -= n  # the common case: a small answer, open windows
            del self.streams[stream_id]
            b = len(block)
            pack = _FRAME.pack
            return pack(b >> 8, b & 0xFF, HEADERS, END_HEADERS, stream_id) + block + pack(
                n >> 8, n & 0xFF, DATA, END_STREAM, stream_id) + body  # fmt: skip
        stream.pending = body
        self.blocked.append(stream_id)
        return frame(HEADERS, END_HEADERS, stream_id, block) + self._send_pending()

    def done(self, stream_id: int) -> None:
        """The work on ``stream_id`` ended without an answer (it raised): it no longer counts as in flight."""
        self.working.discard(stream_id)

    def waiting(self) -> bool:
        """Whether a request is whole and waits for our answer (the upstream's: bounded by its timeout). A request
        the client has not finished, or an answer its windows hold back, is the client's to move."""
        return bool(self.working) or any(s.complete and not s.pending for s in self.streams.values())

    def _unblock(self) -> None:
        if self.blocked:
            data = self._send_pending()
            if data:
                self.out.append(data)

    def _send_pending(self) -> bytes:
        """DATA for the blocked streams, in order, as far as the windows allow."""
        out = []
        still = []
        for stream_id in self.blocked:
            stream = self.streams.get(stream_id)
            if stream is None:
                continue  # reset meanwhile
            while stream.pending:
                n = min(len(stream.pending), self.send_window, stream.window, self.max_frame)
                if n <= 0:
                    break
                chunk, stream.pending = stream.pending[:n], stream.pending[n:]
                self.send_window -= n
                stream.window -= n
                out.append(frame(DATA, 0 if stream.pending else END_STREAM, stream_id, chunk))
            if stream.pending:
                still.append(stream_id)
            else:
                del self.streams[stream_id]
        self.blocked = still
        return b"".join(out)
