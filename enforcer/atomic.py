"""Whole-or-nothing file writes.

- ``write_atomic(path, data, mode)``: ``data`` into a temporary file in the same folder (created ``0600``, so no
  reader sees it half-written or with looser rights), fsync, ``chmod`` to ``mode``, then ``os.replace`` over
  ``path``: a reader sees the old file or the new one, never half of one. On any failure the temporary file is
  removed and the error raised; ``path`` is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
