"""Event inputs are bounded (issue 10, item 12, report and analyst): only regular files are read, opened without
blocking, up to --max-file-size, with lines over 1 MiB skipped unread.

``enforcer report`` on a FIFO, /dev/zero, a directory named like an event file or a file over the size cap: one line
and exit 1, within seconds. The analyst's ingester skips the same inputs, counts each once and keeps ingesting the
good files. A line of 300 MB of NULs (a sparse file) costs neither memory nor a hang.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from enforcer.analyst.ingest import Ingester
from enforcer.analyst.lines import MAX_LINE_BYTES
from enforcer.analyst.store import Store
from tests.analyst.analyst_helpers import generate, write_events
from tests.conftest import BLOCKLISTS, ROOT


def _report(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "enforcer", "report", "--blocklist", str(BLOCKLISTS), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@contextlib.contextmanager
def _unblock(fifos: list[Path]) -> Iterator[None]:
    """Should a reader block on a FIFO anyway (the old code), open and close its write end so the test ends."""
    try:
        yield
    finally:
        for f in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))


def _case_fifo_direct(tmp: Path) -> tuple[list[str], Path]:
    return [str(_fifo(tmp / "events.jsonl"))], tmp / "events.jsonl"


def _case_dev_zero_direct(tmp: Path) -> tuple[list[str], Path]:
    (tmp / "zero.jsonl").symlink_to("/dev/zero")
    return [str(tmp / "zero.jsonl")], tmp / "zero.jsonl"


def _case_dev_zero_in_folder(tmp: Path) -> tuple[list[str], Path]:
    (tmp / "ev").mkdir()
    write_events(tmp / "ev" / "good.jsonl", generate_small())
    (tmp / "ev" / "zero.jsonl").symlink_to("/dev/zero")
    return [str(tmp / "ev")], tmp / "ev" / "zero.jsonl"


def _case_fifo_in_folder(tmp: Path) -> tuple[list[str], Path]:
    (tmp / "ev").mkdir()
    write_events(tmp / "ev" / "good.jsonl", generate_small())
    return [str(tmp / "ev")], _fifo(tmp / "ev" / "pipe.jsonl")


def _case_directory_as_rotation(tmp: Path) -> tuple[list[str], Path]:
    write_events(tmp / "events.jsonl", generate_small())
    (tmp / "events.jsonl.1").mkdir()
    return [str(tmp / "events.jsonl")], tmp / "events.jsonl.1"


def _case_too_large(tmp: Path) -> tuple[list[str], Path]:
    big = tmp / "big.jsonl"
    with big.open("wb") as fh:
        fh.truncate(3 * 1024 * 1024)  # sparse: 3 MB of NULs, over the 2M cap given below
    return [str(big)], big


def _case_gzip_named_jsonl(tmp: Path) -> tuple[list[str], Path]:
    import gzip

    folder = tmp / "events"
    folder.mkdir()
    write_events(folder / "events.jsonl", generate_small())
    bad = folder / "events.jsonl.1"  # logrotate's compress, without its .gz
    bad.write_bytes(gzip.compress((folder / "events.jsonl").read_bytes()))
    return [str(folder)], bad


_SMALL: list = []


def generate_small() -> list:
    if not _SMALL:
        from enforcer.policy import load_policy

        _SMALL.extend(generate(load_policy([BLOCKLISTS]), 20, seed=41))
    return _SMALL


CASES: dict[str, tuple[Callable[[Path], tuple[list[str], Path]], str]] = {
    "fifo": (_case_fifo_direct, "a FIFO"),
    "dev-zero": (_case_dev_zero_direct, "a character device"),
    "dev-zero-in-folder": (_case_dev_zero_in_folder, "a character device"),
    "fifo-in-folder": (_case_fifo_in_folder, "a FIFO"),
    "directory-as-rotation": (_case_directory_as_rotation, "directory"),
    "too-large": (_case_too_large, "over --max-file-size"),
    "gzip-named-jsonl": (_case_gzip_named_jsonl, "gzip-compressed, not JSON Lines; not read (zcat it)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_report_refuses_what_is_not_a_bounded_regular_file(tmp_path: Path, case: str) -> None:
    make, words = CASES[case]
    events, bad = make(tmp_path)
    fifos = [p for p in tmp_path.rglob("*") if p.is_fifo()]
    started = time.monotonic()
    with _unblock(fifos):
        cap = ["--max-file-size", "2M"] if case == "too-large" else []
        out = _report("--events", *events, *cap, "--format", "json", timeout=20)
    assert time.monotonic() - started < 15
    assert out.returncode == 1, out.stdout[:200]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith(f"report: {bad}:") and words in lines[0], lines[0]
    assert out.stdout == ""


def test_report_invalid_max_file_size_is_one_line(tmp_path: Path) -> None:
    write_events(tmp_path / "e.jsonl", generate_small())
    for bad in ("0", "lots", "-1G", "1X"):
        out = _report("--events", str(tmp_path / "e.jsonl"), f"--max-file-size={bad}")
        assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, (bad, out.stderr)
        assert "invalid size" in out.stderr


# ``enforcer`` with its own peak RSS on stderr at exit: VmHWM, the high-water mark of the process's memory since its
# exec (bench/procfs.py). The peak wait4 reports would also count the pytest process's memory: 200 MB in a full run
# of the suite. Run from the repository's root, so ``bench`` is importable.
_WITH_PEAK = """
import sys
from bench.procfs import vm_hwm_kb
from enforcer.cli import main
try:
    code = main(sys.argv[1:])
finally:
    print("VmHWM:", vm_hwm_kb(), "kB", file=sys.stderr)
sys.exit(code)
"""


def test_report_huge_line_is_skipped_in_bounded_memory(tmp_path: Path, policy) -> None:
    """300 MB without a newline (sparse NULs), then real events: counted, in far less memory than the line."""
    events = generate(policy, 200, seed=42)
    path = tmp_path / "events.jsonl"
    write_events(path, events[:100])
    with path.open("r+b") as fh:
        fh.seek(300 * 1024 * 1024, os.SEEK_END)  # a hole of NULs, no newline: one 300 MB line
        fh.write(b"\n")
    assert path.stat().st_size > 300 * 1024 * 1024
    write_events(path, events[100:])
    out_path, err_path = tmp_path / "out.json", tmp_path / "err.txt"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.run(
            [sys.executable, "-c", _WITH_PEAK, "report", "--events", str(path), "--format", "json",
             "--blocklist", str(BLOCKLISTS), "--workers", "1"],
            cwd=ROOT, stdout=out, stderr=err, timeout=60,
        )  # fmt: skip
    stderr = err_path.read_text(encoding="utf-8", errors="replace")
    assert proc.returncode == 0, stderr[-2000:]
    doc = json.loads(out_path.read_text(encoding="utf-8"))
    assert sum(a["hits"] for a in doc["apps"]) == 200
    assert "oversize 1" in stderr
    peak_mb = int(re.search(r"^VmHWM:\s+(\d+) kB", stderr, re.MULTILINE).group(1)) / 1024
    assert peak_mb < 200, f"peak RSS {peak_mb:.0f} MB for a 300 MB line"


def _poll_with_deadline(ing: Ingester, seconds: float = 15) -> int:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(ing.poll_once).result(timeout=seconds)


def test_ingest_skips_and_counts_what_is_not_a_bounded_regular_file(tmp_path: Path, policy) -> None:
    events = generate(policy, 300, seed=43)
    ev = tmp_path / "ev"
    ev.mkdir()
    write_events(ev / "good.jsonl", events)
    fifos = [_fifo(ev / "pipe.jsonl"), _fifo(tmp_path / "direct.jsonl")]
    (ev / "zero.jsonl").symlink_to("/dev/zero")
    (ev / "dir.jsonl").mkdir()
    with (ev / "big.jsonl").open("wb") as fh:
        fh.truncate(5 * 1024 * 1024)
    (ev / "good.jsonl.1").write_bytes(b"\x1f\x8b\x08\x00" + bytes(100))  # gzip'd by a rotation, named as before
    store = Store(tmp_path / "a.sqlite")
    ing = Ingester(store, [ev, tmp_path / "direct.jsonl"], parser_process=False, max_file_bytes=4 * 1024 * 1024)
    try:
        with _unblock(fifos):
            assert _poll_with_deadline(ing) == 300
            assert _poll_with_deadline(ing) == 0  # the refused files are counted once, not on every poll
    finally:
        ing.stop()
        store.close()
    assert ing.files_skipped == {"not_regular": 4, "too_large": 1, "compressed": 1}
    assert ing.errors == {}


def test_ingest_oversize_line_is_counted_once_and_the_rest_kept(tmp_path: Path, policy) -> None:
    events = generate(policy, 60, seed=44)
    path = tmp_path / "events.jsonl"
    write_events(path, events[:30])
    store = Store(tmp_path / "a.sqlite")
    ing = Ingester(store, [path], parser_process=False)
    try:
        assert ing.poll_once() == 30
        # A line over the limit, still being written (no newline yet): nothing is counted, nothing is held.
        with path.open("ab") as fh:
            fh.write(b"{" + b"x" * (MAX_LINE_BYTES + 10))
        assert ing.poll_once() == 0 and ing.errors == {}
        with path.open("ab") as fh:
            fh.write(b"x" * (20 * 1024 * 1024) + b"}\n")  # over the ingester's 16 MB read size too
        write_events(path, events[30:])
        assert ing.poll_once() == 30
        assert ing.poll_once() == 0
    finally:
        ing.stop()
        store.close()
    assert ing.errors == {"oversize": 1}
    assert store.count() == 60
