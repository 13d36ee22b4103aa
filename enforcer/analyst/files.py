"""Which files hold events: the inputs of ``enforcer report`` and the analyst's ingest, expanded the same way.

- ``event_files(paths)``: files and folders -> the files to read (a folder: its ``*.jsonl`` plus rotated
  ``*.jsonl.N``; a file: itself plus its rotated siblings ``FILE.N``), oldest first, each file once (by inode).
  Entries named like event files that are not regular files are listed too, so that the caller refuses them
  (``check_files``) instead of silently skipping them.
- ``rotated_siblings(path)``: ``path`` and its rotations, oldest first; ``is_rotated(path)``: whether it is one.
- ``check_files(files, max_bytes)``: every file ``lines.open_event_file`` refuses, for the caller to report.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from .lines import DEFAULT_MAX_FILE_BYTES, EventFileError, open_event_file

_ROTATED = re.compile(r"^(.*)\.(\d+)$", re.DOTALL)  # DOTALL: a name may hold any character but / and NUL


def _rotation_key(path: Path) -> tuple[str, int]:
    m = _ROTATED.match(path.name)
    if m and m.group(2).isdigit():
        return m.group(1), -int(m.group(2))  # oldest rotation (highest N) first
    return path.name, 0


def rotated_siblings(path: Path) -> list[Path]:
    """``path`` and its rotations ``path.1`` .. ``path.N`` that exist, oldest first."""
    out: list[Path] = []
    parent = path.parent if str(path.parent) else Path(".")
    prefix = path.name + "."
    try:
        names = os.listdir(parent)
    except OSError:
        names = []
    for name in names:
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            out.append(parent / name)
    if path.exists() or path.is_symlink():
        out.append(path)
    return sorted(out, key=_rotation_key)


def check_files(files: Iterable[Path], max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> list[EventFileError]:
    """Every file that ``open_event_file`` refuses (not a regular file, too large, unreadable), for the caller to
    report; the files are opened the same way again when they are read."""
    problems: list[EventFileError] = []
    for f in files:
        try:
            open_event_file(f, max_bytes).close()
        except EventFileError as exc:
            problems.append(exc)
    return problems


def event_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders into the event files to read; each physical file once."""
    seen: set[tuple[int, int]] = set()
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            bases = sorted(q for q in p.iterdir() if q.suffix == ".jsonl" or _is_rotated_jsonl(q.name))
            candidates = sorted(bases, key=_rotation_key)
        else:
            candidates = rotated_siblings(p)
        for q in candidates:
            try:
                st = q.stat()
            except OSError:
                # A dangling symlink named like an event file: listed, so that opening it says why.
                if q.is_symlink():
                    out.append(q)
                continue
            ident = (st.st_dev, st.st_ino)
            if ident not in seen:
                seen.add(ident)
                out.append(q)
    return out


def is_rotated(path: Path) -> bool:
    """A rotation (``NAME.N``): never appended to again, so its unterminated last line is final."""
    return _ROTATED.match(path.name) is not None


def _is_rotated_jsonl(name: str) -> bool:
    m = _ROTATED.match(name)
    return bool(m and m.group(1).endswith(".jsonl"))
