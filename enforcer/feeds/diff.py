"""What a new copy of a feed changes: names added and removed, the share changed, and the safety names it would flip.

- ``FeedDiff(added, removed, old_count, new_count)``; ``.share``: (added + removed) / old count (0 for a first copy),
  compared with the include's ``max_change``.
- ``read_must_pass(path)``: the held-out safety names, one per line (``#`` comments): shared hosts such as ``qq.com``
  or ``google.com`` that no feed may ever block (blocklists/must-pass.txt).
- ``verdict_changes(old, new, names)``: the safety names blocked by ``new`` that ``old`` did not block, with the rule
  that would block each (``old`` may be None: nothing was blocked before).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..policy.matcher import Policy
from ..policy.names import InvalidName, normalize_name


@dataclass(frozen=True)
class FeedDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    old_count: int = 0
    new_count: int = 0

    @property
    def share(self) -> float:
        if not self.old_count:
            return 0.0
        return (len(self.added) + len(self.removed)) / self.old_count


def diff_names(old: Iterable[str] | None, new: Iterable[str]) -> FeedDiff:
    old_set = set(old) if old is not None else set()
    new_set = set(new)
    return FeedDiff(sorted(new_set - old_set), sorted(old_set - new_set), len(old_set), len(new_set))


def read_must_pass(path: str | Path) -> list[str]:
    """The safety names of ``path``; a line that is not a name is skipped (the file is ours, reviewed like code)."""
    names = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            names.append(normalize_name(text))
        except InvalidName:
            continue
    return names


def verdict_changes(old: Policy | None, new: Policy, names: Iterable[str]) -> list[tuple[str, str]]:
    """``(name, rule id)`` of every safety name that ``new`` blocks and ``old`` did not."""
    out = []
    for name in names:
        rule = new.match_key(name)
        if rule is None or rule.action != "block":
            continue
        before = old.match_key(name) if old is not None else None
        if before is None or before.action != "block":
            out.append((name, rule.id))
    return out
