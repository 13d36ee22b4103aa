"""Batched UDP I/O on Linux: many datagrams per system call, read and answered from one reader callback.

- ``BatchedUdpServer(sock, handler, count)``: ``start()`` registers a reader on the running loop (``loop.add_reader``
  on the non-blocking socket); each time the socket is readable it drains up to ``BATCH`` datagrams with ONE
  ``recvmmsg``, hands each to the chain, and sends every synchronous reply (blocked, cached, refused, malformed) of
  that batch with ONE ``sendmmsg``. Forwarded (awaitable) replies are sent when they complete, with a plain
  ``sendto``. ``close()`` removes the reader and cancels the forwards in flight.
- ``available()``: whether this platform has ``recvmmsg``/``sendmmsg`` (Linux, glibc or musl, through ctypes: no C
  extension to build); elsewhere server.py keeps the ``DatagramProtocol`` path.

Why: under load each datagram costs uvloop (or asyncio) one read callback, one ``recvfrom`` and one ``sendto``; with
dozens of queries in flight a batch holds many datagrams and the per-datagram work left is a few slice copies
(docs/performance.md). The buffers are preallocated once: ``BATCH`` slots of 65,535 bytes to read (no UDP datagram is
larger, so nothing is ever truncated, as on the ``DatagramProtocol`` path) and ``BATCH`` slots to send; the receive
headers the last call filled in are restored from a pristine copy with one ``memmove`` (the kernel rewrites each
name length).

Errors keep the listener serving: a handler exception drops that datagram (counted ``dropped``, logged at most once
a minute); a reply the kernel refuses (``sendmmsg`` stops at it) is skipped and counted ``dropped``; a send that
would block (socket buffer full) drops the rest of the batch, counted: UDP clients retry. Client addresses are the
tuples Python's socket module gives (``(host, port)``, IPv6 ``(host, port, flowinfo, scope_id)``), decoded once per
raw address (memoised, bounded).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import functools
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

from .chain import Handler
from .observe import RateLimitedLog

log = logging.getLogger("enforcer.dns.server")
ratelog = RateLimitedLog(log)

BATCH = 32  # datagrams per recvmmsg/sendmmsg; dnsperf keeps hundreds in flight, a LAN's clients far fewer
SLOT = 65_535  # bytes per receive/send slot: the largest UDP payload, so no datagram is ever cut
ADDRS_MAX = 65_536  # memoised raw source addresses (spoofed sources cost one decode each and bounded memory)
MSG_DONTWAIT = 0x40


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint32)]


_SOCKADDR_SIZE = 28  # sizeof(struct sockaddr_in6), the larger of the two
_LEN_INDEX = _Mmsghdr.msg_len.offset // 4  # msg_len in a uint32 view of one header
_HDR_WORDS = ctypes.sizeof(_Mmsghdr) // 4


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # PyDLL: the GIL stays held during the call. The calls never block (MSG_DONTWAIT, a non-blocking socket), and
        # releasing the GIL would hand it to the event writer's thread in the middle of a batch.
        lib = ctypes.PyDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        recv, send = lib.recvmmsg, lib.sendmmsg
    except (OSError, AttributeError):
        return None
    recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    recv.restype = send.restype = ctypes.c_int
    return lib


_LIBC = _libc()


def available() -> bool:
    """True where recvmmsg and sendmmsg can be called (Linux)."""
    return _LIBC is not None


def decode_address(raw: bytes) -> tuple[str, int] | tuple[str, int, int, int]:
    """A raw ``sockaddr_in``/``sockaddr_in6`` as Python's socket module gives it (IPv6: ``%scope`` when scoped)."""
    family = int.from_bytes(raw[0:2], sys.byteorder)
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    flowinfo = int.from_bytes(raw[4:8], "big")
    scope = int.from_bytes(raw[24:28], sys.byteorder)
    host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
    if scope:
        try:
            host += "%" + socket.if_indextoname(scope)
        except OSError:
            host += f"%{scope}"
    return host, port, flowinfo, scope


class _Slots:
    """``count`` mmsghdr entries, each with one iovec over its own ``SLOT``-byte buffer and its own address buffer."""

    def __init__(self, count: int, namelen: int) -> None:
        self.hdrs = (_Mmsghdr * count)()
        self.iovs = (_Iovec * count)()
        self.data = ctypes.create_string_buffer(count * SLOT)
        self.names = ctypes.create_string_buffer(count * _SOCKADDR_SIZE)
        base, names = ctypes.addressof(self.data), ctypes.addressof(self.names)
        for i in range(count):
            self.iovs[i].iov_base = base + i * SLOT
            self.iovs[i].iov_len = SLOT
            h = self.hdrs[i].msg_hdr
            h.msg_name = names + i * _SOCKADDR_SIZE
            h.msg_namelen = namelen
            h.msg_iov = ctypes.pointer(self.iovs[i])
            h.msg_iovlen = 1
        self.pristine = bytes(self.hdrs)  # what recvmmsg's headers are reset to before each call
        self.data_view = memoryview(self.data).cast("B")
        self.names_view = memoryview(self.names).cast("B")
        self.words = memoryview(self.hdrs).cast("B").cast("I")  # msg_len of header i: words[i * _HDR_WORDS + 14]
        self.iov_lens = memoryview(self.iovs).cast("B").cast("Q")  # iov_len of slot i: iov_lens[2 * i + 1]


def forwarded_reply(
    task: asyncio.Task[Any], addr: Any, tasks: set[asyncio.Task[Any]], count: Callable[[str], None]
) -> bytes | None:
    """The reply of a finished forwarding task (both UDP paths send it their own way), or None: cancelled, no answer,
    or failed (logged at most once a minute, counted as dropped). The task leaves ``tasks``."""
    tasks.discard(task)
    if task.cancelled():
        return None
    exc = task.exception()
    if exc is not None:
        ratelog("forward", logging.ERROR, "error forwarding a query from %s: %r", addr[0] if addr else "?", exc)
        count("dropped")
        return None
    reply: bytes | None = task.result()
    return reply


class BatchedUdpServer:
    """UDP on one bound, non-blocking socket, read and answered in batches (see the module docstring)."""

    def __init__(self, sock: socket.socket, handler: Handler, count: Callable[[str], None]) -> None:
        if _LIBC is None:
            raise OSError(errno.ENOSYS, "recvmmsg/sendmmsg are not available on this platform")
        self.sock = sock
        self.fd = sock.fileno()
        self.handler = handler
        self.count = count
        self.tasks: set[asyncio.Task[Any]] = set()
        self.namelen = 28 if sock.family == socket.AF_INET6 else 16
        self.rx = _Slots(BATCH, self.namelen)
        self.tx = _Slots(BATCH, self.namelen)
        self.addresses: dict[bytes, Any] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self.dirty = 0  # receive headers written by the last recvmmsg
        self.batches = 0  # recvmmsg calls that returned datagrams, and the datagrams they returned (per batch: cheap)
        self.received = 0

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.fd, self._readable)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.loop is not None:
            self.loop.remove_reader(self.fd)
        for t in list(self.tasks):
            t.cancel()
        self.sock.close()

    def _readable(self) -> None:
        rx, tx = self.rx, self.tx
        if self.dirty:  # only the headers the last call filled in (a batch of one costs a 64-byte copy, not 2 KiB)
            ctypes.memmove(rx.hdrs, rx.pristine, self.dirty * ctypes.sizeof(_Mmsghdr))
        n = _LIBC.recvmmsg(self.fd, rx.hdrs, BATCH, MSG_DONTWAIT, None)
        self.dirty = max(n, 0)
        if n <= 0:
            err = ctypes.get_errno()
            if n < 0 and err not in (errno.EAGAIN, errno.EINTR):
                # ICMP errors for earlier replies (a client went away) surface here: nothing to do, keep serving.
                log.debug("UDP receive error: %s", errno.errorcode.get(err, err))
            return
        self.batches += 1
        self.received += n
        # Slicing the ctypes buffers gives bytes in one step (a memoryview slice and bytes() of it cost twice as much).
        data_buf: Any = rx.data  # (typeshed reads a char array's slice as a list; it is bytes)
        names_buf: Any = rx.names
        handler, words, addresses = self.handler, rx.words, self.addresses
        namelen = self.namelen
        out_data, out_names, out_lens = tx.data_view, tx.names_view, tx.iov_lens
        ready = 0
        for i in range(n):
            start = i * SLOT
            data = data_buf[start : start + words[i * _HDR_WORDS + _LEN_INDEX]]
            at = i * _SOCKADDR_SIZE
            raw = names_buf[at : at + namelen]
            addr = addresses.get(raw)
            if addr is None:
                if len(addresses) >= ADDRS_MAX:
                    addresses.clear()
                addr = addresses[raw] = decode_address(raw)
            try:
                reply = handler(data, addr, False)
            except Exception:  # a bug in one query's handling must not stop the listener
                ratelog("udp", logging.ERROR, "error handling a UDP query from %s", addr[0], exc_info=True)
                self.count("dropped")
                continue
            if reply is None:
                continue
            if type(reply) is list:  # the chain returns lists over TCP only; keep UDP to one datagram regardless
                if not reply:
                    continue
                reply = reply[0]
            if type(reply) is bytes:
                size = len(reply)
                slot = ready * SLOT
                out_data[slot : slot + size] = reply
                out_names[ready * _SOCKADDR_SIZE : ready * _SOCKADDR_SIZE + namelen] = raw
                out_lens[2 * ready + 1] = size
                ready += 1
                continue
            task = asyncio.ensure_future(reply)  # type: ignore[arg-type]
            self.tasks.add(task)
            task.add_done_callback(functools.partial(self._done, addr=addr))
        if ready:
            self._send(ready)

    def _send(self, ready: int) -> None:
        sent = 0
        hdrs = self.tx.hdrs
        while sent < ready:
            n = _LIBC.sendmmsg(self.fd, ctypes.byref(hdrs[sent]), ready - sent, MSG_DONTWAIT)
            if n > 0:
                sent += n
                continue
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            if err in (errno.EAGAIN, errno.ENOBUFS):  # the send buffer is full: the rest are lost, clients retry
                for _ in range(ready - sent):
                    self.count("dropped")
                return
            # This one reply was refused (e.g. a destination the kernel will not send to): skip it, send the rest.
            ratelog("udp-send", logging.WARNING, "UDP reply not sent: %s", errno.errorcode.get(err, err))
            self.count("dropped")
            sent += 1

    def _done(self, task: asyncio.Task[Any], addr: Any) -> None:
        reply = forwarded_reply(task, addr, self.tasks, self.count)
        if reply is None or self.closed:
            return
        try:
            self.sock.sendto(reply, addr)
        except (BlockingIOError, InterruptedError):
            self.count("dropped")
        except OSError as exc:
            log.debug("UDP send error: %s", exc)
            self.count("dropped")
