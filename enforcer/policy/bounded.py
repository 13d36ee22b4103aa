"""Bounded reading of policy and config files: nothing a file system holds can hang or exhaust a load.

- ``Limits`` / ``DEFAULT_LIMITS``: the caps on one load (YAML bytes, feed bytes, YAML nesting depth).
- ``read_regular(path, limit)``: only regular files (a FIFO, a device or a symlink to one is refused without
  blocking), at most ``limit`` bytes; ``Unreadable`` with one line otherwise.
- ``compose_bounded(text, max_depth)``: ``yaml.compose`` that stops nesting at a fixed depth (PyYAML composes
  recursively: 500 nested brackets would be a RecursionError); ``node_pos(node)``: a node's (line, column), 1-based.

Used by the blocklist loader (``blocklist.py``) and by ``--config`` (``enforcer/config.py``).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any

import yaml
import yaml.composer

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on what one load may read. A 1M-name feed is ~25 MB; the shipped YAML files are a few KB each."""

    yaml_bytes: int = 8 * MiB
    feed_bytes: int = 64 * MiB
    yaml_depth: int = 32  # the blocklist schema needs 4 levels (top, block, rule, store); 32 leaves room


DEFAULT_LIMITS = Limits()


class Unreadable(Exception):
    """A file that is not read: missing, not a regular file, or over its size cap. The message says which."""


def _file_kind(mode: int) -> str:
    for test, what in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return what
    return "not a plain file"


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes:
    """Read a regular file of at most ``limit`` bytes; raise ``Unreadable`` otherwise, never block.

    The path is checked with stat() before opening (so a device is never even opened), then opened with O_NONBLOCK
    (a FIFO swapped in meanwhile cannot block open()) and checked again with fstat() on what was actually opened.
    Reading stops one byte past the cap, so a file that grows while being read cannot exhaust memory either.
    """
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise Unreadable(f"not a regular file ({_file_kind(st.st_mode)})")
        if st.st_size > limit:
            raise Unreadable(f"file too large ({st.st_size} bytes; the limit is {limit})")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise Unreadable(exc.strerror or str(exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Unreadable(f"not a regular file ({_file_kind(st.st_mode)})")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(4 * MiB, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise Unreadable(f"file too large (more than {limit} bytes)")
        return b"".join(chunks)
    except OSError as exc:
        raise Unreadable(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses nesting deeper than ``max_depth`` (checked before recursing)."""

    max_depth = DEFAULT_LIMITS.yaml_depth

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                # types-PyYAML leaves Parser.peek_event unannotated.
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(None, None, f"nesting deeper than {self.max_depth} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def compose_bounded(text: str, max_depth: int = DEFAULT_LIMITS.yaml_depth) -> yaml.Node | None:
    """``yaml.compose`` with a nesting limit (raises a MarkedYAMLError at the node that goes too deep)."""
    loader = _BoundedLoader(text)
    loader.max_depth = max_depth
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def node_pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1
