"""The local copy of a URL feed and what is known about it.

- ``Meta``: the validators (ETag, Last-Modified) of the copy, its sha256, name count, and when it was last confirmed
  current (``checked_at``: a 200 that was swapped in, or a 304) or last fetched with a change (``changed_at``).
- ``read_meta(local)`` / ``write_meta(local, meta)``: ``<local>.json`` beside the ``.txt`` copy (missing or broken:
  an empty ``Meta``, so the next fetch is unconditional).
- ``swap(local, data)``: write ``data`` to a temporary file in the same folder, fsync, ``os.replace`` over the copy: a
  reader (the resolver's reload) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..atomic import write_atomic


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
    write_atomic(meta_path(local), json.dumps(asdict(meta), indent=1).encode())


def swap(local: Path, data: bytes) -> None:
    write_atomic(local, data)
