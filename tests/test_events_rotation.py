"""The event writer loses nothing silently when its file is rotated or deleted from outside (logrotate without
copytruncate, with copytruncate, rm), and reopens on request (``reopen()``, ``reopen_all()``, SIGUSR1) — with real
files, a real ``enforcer dns`` process and real signals. Counters stay honest: ``written`` is what is in a file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dns.message
import dns.query
import pytest

import enforcer.events
from enforcer.events import EventWriter, HitEvent, iter_events
from tests.conftest import ROOT, eventually, free_port


def _event(i: int) -> HitEvent:
    return HitEvent(
        timestamp=datetime.now(UTC),
        action="dns-block",
        component="dns",
        rule_id="t:domain:blocked.example",
        app="t",
        category="web",
        reference="t.yaml:5",
        version="v",
        dns_question_name=f"n{i}.blocked.example",
    )


def _names(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [doc["dns"]["question"]["name"] for doc in iter_events(path)]


def _emit(writer: EventWriter, start: int, count: int) -> list[str]:
    for i in range(start, start + count):
        assert writer.emit(_event(i))
    writer.flush()
    return [f"n{i}.blocked.example" for i in range(start, start + count)]


def _open_targets(pid: int | None = None) -> list[str]:
    """What the process's file descriptors point at (/proc/PID/fd), e.g. '/x/events.jsonl (deleted)'."""
    base = Path(f"/proc/{pid or os.getpid()}/fd")
    out = []
    for fd in base.iterdir():
        try:
            out.append(os.readlink(fd))
        except OSError:  # closed meanwhile
            continue
    return out


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[EventWriter]:
    w = EventWriter(tmp_path / "events.jsonl", flush_interval=0.02)
    yield w
    w.close()


def test_rename_sends_later_events_to_a_new_file(tmp_path: Path, writer: EventWriter) -> None:
    path = tmp_path / "events.jsonl"
    before = _emit(writer, 0, 50)
    os.rename(path, tmp_path / "events.jsonl.1")  # logrotate's default: rename, no copytruncate
    after = _emit(writer, 50, 50)
    assert _names(tmp_path / "events.jsonl.1") == before
    assert _names(path) == after
    assert (writer.written, writer.dropped) == (100, 0)


def test_delete_sends_later_events_to_a_new_file(tmp_path: Path, writer: EventWriter) -> None:
    path = tmp_path / "events.jsonl"
    _emit(writer, 0, 20)
    path.unlink()
    after = _emit(writer, 20, 30)
    assert _names(path) == after
    assert (writer.written, writer.dropped) == (50, 0)


def test_repeated_rotation_under_load_keeps_every_event_once(tmp_path: Path, writer: EventWriter) -> None:
    path = tmp_path / "events.jsonl"
    stop = threading.Event()
    rotations: list[Path] = []

    def rotate() -> None:
        while not stop.is_set():
            time.sleep(0.015)
            target = tmp_path / f"events.jsonl.{len(rotations) + 1}"
            try:
                os.rename(path, target)
            except FileNotFoundError:  # nothing written since the last rotation
                continue
            rotations.append(target)

    rotator = threading.Thread(target=rotate)
    rotator.start()
    try:
        expected: list[str] = []
        for k in range(40):
            expected += _emit(writer, k * 100, 100)
            time.sleep(0.005)
    finally:
        stop.set()
        rotator.join()
    tail = _emit(writer, 10_000, 10)
    assert len(rotations) > 5
    seen = [n for f in [*rotations, path] for n in _names(f)]
    assert sorted(seen) == sorted(expected + tail)  # nothing lost, nothing twice
    assert _names(path)[-10:] == tail  # after the last rotation, events go to the path again
    assert (writer.written, writer.dropped) == (len(expected) + 10, 0)


def test_a_batch_written_into_a_file_deleted_meanwhile_is_written_again(tmp_path: Path) -> None:
    # The race between the writer's check and its write, made deterministic: skip the checks once, after a delete.
    class Unchecked(EventWriter):
        skip = False

        def _check_file(self, every: float) -> None:
            if not self.skip:
                super()._check_file(every)

    path = tmp_path / "events.jsonl"
    w = Unchecked(path, flush_interval=0.02)
    try:
        _emit(w, 0, 5)
        w.skip = True
        path.unlink()
        after = _emit(w, 5, 7)
        assert _names(path) == after
        assert (w.written, w.dropped) == (12, 0)
    finally:
        w.close()


def test_idle_writer_lets_go_of_a_rotated_or_deleted_file_within_a_second(tmp_path: Path, writer: EventWriter) -> None:
    path = tmp_path / "events.jsonl"
    _emit(writer, 0, 3)
    rotated = tmp_path / "events.jsonl.1"
    os.rename(path, rotated)
    started = time.monotonic()
    eventually(lambda: str(rotated) not in _open_targets(), timeout=3.0, interval=0.02)
    assert time.monotonic() - started < 1.5
    _emit(writer, 3, 1)
    path.unlink()
    eventually(lambda: f"{path} (deleted)" not in _open_targets(), timeout=3.0, interval=0.02)
    assert writer.reopened == 2


def test_copytruncate_does_not_trigger_an_early_size_rotation(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    w = EventWriter(path, flush_interval=0.02, max_bytes=60_000)
    try:
        first = _emit(w, 0, 100)
        size = path.stat().st_size
        assert 30_000 < size < 60_000
        shutil.copyfile(path, tmp_path / "copy.jsonl")  # logrotate copytruncate: copy, then truncate in place
        os.truncate(path, 0)
        second = _emit(w, 100, 100)
        assert not (tmp_path / "events.jsonl.1").exists()  # the writer knows the file is small again
        assert _names(tmp_path / "copy.jsonl") == first
        assert _names(path) == second
    finally:
        w.close()


@pytest.mark.parametrize("how", ["method", "all"])
def test_reopen_request_closes_and_reopens_the_file(tmp_path: Path, writer: EventWriter, how: str) -> None:
    path = tmp_path / "events.jsonl"
    _emit(writer, 0, 2)
    assert str(path) in _open_targets()
    writer.reopen() if how == "method" else enforcer.events.reopen_all()
    eventually(lambda: str(path) not in _open_targets(), timeout=2.0, interval=0.02)
    assert writer.reopened == 1
    _emit(writer, 2, 2)
    assert len(_names(path)) == 4 and writer.written == 4


def test_sigusr1_handler_reopens_in_process(tmp_path: Path, writer: EventWriter) -> None:
    path = tmp_path / "events.jsonl"
    old = signal.getsignal(signal.SIGUSR1)
    try:
        assert enforcer.events.install_reopen_signal() is True
        _emit(writer, 0, 1)
        os.kill(os.getpid(), signal.SIGUSR1)
        eventually(lambda: writer.reopened == 1 and str(path) not in _open_targets(), timeout=2.0, interval=0.02)
    finally:
        signal.signal(signal.SIGUSR1, old)


# -- a real `enforcer dns` process ---------------------------------------------------------------------------------

BLOCKLIST = """\
app: t
policy:
  effective: 2023-10-30
block:
  - domain: blocked.example
    category: web
"""


class _Dns:
    def __init__(self, tmp: Path) -> None:
        (tmp / "lists").mkdir()
        (tmp / "lists" / "t.yaml").write_text(BLOCKLIST)
        self.port = free_port()
        self.metrics_port = free_port()
        self.events = tmp / "dns.jsonl"
        # Blocked names are answered locally; the upstream port is closed, so nothing ever leaves the machine.
        cmd = [sys.executable, "-m", "enforcer", "dns", "--listen", f"127.0.0.1:{self.port}",
               "--upstream", f"127.0.0.1:{free_port()}", "--blocklist", str(tmp / "lists"),
               "--metrics", f"127.0.0.1:{self.metrics_port}", "--events", str(self.events)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert b"listening on" in line, self.proc.stderr.read() if self.proc.stderr else line

    def block(self, prefix: str, count: int) -> list[str]:
        names = [f"{prefix}{i}.blocked.example" for i in range(count)]
        for name in names:
            reply = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=self.port, timeout=3)
            assert reply.answer  # the sinkhole answer
        return names

    def metric(self, name: str) -> float:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return -1.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def dns_proc(tmp_path: Path) -> Iterator[_Dns]:
    proc = _Dns(tmp_path)
    yield proc
    proc.stop()


def _sorted_names(path: Path) -> list[str]:
    return sorted(_names(path))


@pytest.mark.e2e
def test_real_resolver_follows_rename_delete_and_sigusr1(tmp_path: Path, dns_proc: _Dns) -> None:
    events = dns_proc.events
    first = dns_proc.block("a", 5)
    eventually(lambda: len(_names(events)) == 5, timeout=5.0, interval=0.02)
    os.rename(events, tmp_path / "dns.jsonl.1")
    second = dns_proc.block("b", 5)
    eventually(lambda: len(_names(events)) == 5, timeout=5.0, interval=0.02)
    assert _sorted_names(tmp_path / "dns.jsonl.1") == sorted(first)
    assert _sorted_names(events) == sorted(second)

    events.unlink()
    third = dns_proc.block("c", 5)
    eventually(lambda: len(_names(events)) == 5, timeout=5.0, interval=0.02)
    assert _sorted_names(events) == sorted(third)

    # SIGUSR1: the resolver survives it (without a handler it is fatal) and lets go of its file at once.
    assert str(events) in _open_targets(dns_proc.proc.pid)
    dns_proc.proc.send_signal(signal.SIGUSR1)
    eventually(lambda: str(events) not in _open_targets(dns_proc.proc.pid), timeout=3.0, interval=0.02)
    assert dns_proc.proc.poll() is None
    fourth = dns_proc.block("d", 5)
    eventually(lambda: len(_names(events)) == 10, timeout=5.0, interval=0.02)
    assert _sorted_names(events) == sorted(third + fourth)

    # Honest counters: 20 written (all of them in a file we can read), none dropped.
    assert dns_proc.metric("enforcer_events_written_total") == 20.0
    assert dns_proc.metric("enforcer_events_dropped_total") == 0.0
