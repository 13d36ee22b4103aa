"""The local copy of a URL feed and what is known about it.

- ``Meta``: the validators (ETag, Last-Modified) of the copy, its sha256, name count, and when it was last confirmed
  current (``checked_at``: a 200 that was swapped in, or a 304) or last fetched with a change (``changed_at``).
- ``read_meta(local)`` / ``write_meta(local, meta)``: ``<local>.json`` beside the ``.txt`` copy (missing or broken:
  an empty ``Meta``, so the next fetch is unconditional).
- ``swap(local, data)``: write ``data`` to a temporary file in the same folder, fsync, ``os.replace`` over the copy: a
  reader (the resolver's reload) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Meta:
    url: str = ""
    etag: str | None = None
    last_modified: str | None = None
    sha256: str | None = None
    names: int = 0
    checked_at: float = 0.0
    changed_at: float = 0.0


def meta_path(local: Path) -> Path:
    return local.with_suffix(".json")


def read_meta(local: Path) -> Meta:
    try:
        data = json.loads(meta_path(local).read_text(encoding="utf-8"))
        return Meta(**{k: v for k, v in data.items() if k in Meta.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return Meta()


def write_meta(local: Path, meta: Meta) -> None:
    _atomic_write(meta_path(local), json.dumps(asdict(meta), indent=1).encode())


def swap(local: Path, data: bytes) -> None:
    _atomic_write(local, data)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
