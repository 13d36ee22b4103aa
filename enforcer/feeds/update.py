"""Update the URL feeds of a blocklist: fetch, check, diff, swap only what passes every check.

- ``find_feeds(paths)``: the URL includes (``FeedSpec``) of blocklist files or folders, read from the YAML alone (a
  feed with no local copy yet must still be found), plus one-line problems for includes that are not valid.
- ``await update_feed(spec, paths, must_pass, opts)`` -> ``FeedResult``; ``await update_all(paths, must_pass, opts)``.
  One feed, in order: download (conditional on the stored validators; 304: ``unchanged``) -> decode and parse as a
  feed (a bad line: ``refused``) -> a pinned feed must hash to its pin -> the same bytes as the copy: ``unchanged``
  -> the share of names added and removed within ``max_change`` (not for a first copy) -> the whole blocklist loaded
  with the new copy in a staging folder (the checks of ``enforcer check``; messages name the real files) -> no
  ``must-pass`` name newly blocked -> swap (``updated``; ``would_update`` with ``dry_run``). A download error is
  ``failed``. Anything but ``updated`` leaves the last good copy in place. Policy loads run in a worker thread.
- ``UpdateOptions``: dry run, timeout, size cap, private CA, and ``record(spec, result)`` (metrics, scheduler).
- ``default_must_pass(paths)``: ``must-pass.txt`` in the first blocklist folder, else the shipped one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import default_blocklist
from ..policy import lint
from ..policy.blocklist import load_policy
from ..policy.bounded import DEFAULT_LIMITS, Unreadable, compose_bounded, read_regular
from ..policy.feeds import FEEDS_DIR, FeedSpec, error_count, parse_feed, parse_spec
from ..policy.matcher import Policy
from ..policy.model import PolicyError, Problem
from .diff import FeedDiff, diff_names, verdict_changes
from .fetch import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT, Fetched, FetchError, fetch
from .store import Meta, read_meta, swap, write_meta

log = logging.getLogger("enforcer.feeds")

RESULTS = ("updated", "unchanged", "refused", "failed")


@dataclass
class UpdateOptions:
    dry_run: bool = False
    timeout: float = DEFAULT_TIMEOUT
    max_bytes: int = DEFAULT_MAX_BYTES
    cafile: str | None = None
    record: Callable[[FeedSpec, str], None] | None = None


@dataclass
class FeedResult:
    spec: FeedSpec
    result: str  # updated | would_update | unchanged | refused | failed
    message: str
    diff: FeedDiff | None = None
    flipped: list[tuple[str, str]] = field(default_factory=list)  # (must-pass name, rule that would block it)
    problems: list[str] = field(default_factory=list)
    retry_after: float | None = None  # the server's Retry-After (fetch.FetchError), seconds


def _yaml_files(paths: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files.extend(sorted(x for x in p.iterdir() if x.suffix in (".yaml", ".yml") and x.is_file()))
        elif p.is_file():
            files.append(p)
    return files


def _mapping(node: yaml.Node | None) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: v for k, v in node.value if isinstance(k, yaml.ScalarNode)}


def find_feeds(paths: Sequence[str | Path]) -> tuple[list[FeedSpec], list[str]]:
    """Read as the loader reads (size cap, nesting limit, the node tree: no alias is ever expanded)."""
    specs: list[FeedSpec] = []
    problems: list[str] = []
    for f in _yaml_files(paths):
        try:
            root = compose_bounded(read_regular(f, DEFAULT_LIMITS.yaml_bytes).decode("utf-8"))
        except (Unreadable, UnicodeDecodeError, yaml.YAMLError) as exc:
            problems.append(f"{f}: cannot read ({type(exc).__name__}); run enforcer check --blocklist {f}")
            continue
        block = _mapping(root).get("block")
        for rule in block.value if isinstance(block, yaml.SequenceNode) else []:
            inc = _mapping(rule).get("include")
            if isinstance(inc, yaml.MappingNode):
                values = {k: v.value for k, v in _mapping(inc).items() if isinstance(v, yaml.ScalarNode)}
                try:
                    specs.append(parse_spec(values, f))
                except ValueError as exc:
                    problems.append(f"{f}:{inc.start_mark.line + 1}: {exc}")
    return specs, problems


def default_must_pass(paths: Sequence[str | Path]) -> Path:
    for raw in paths:
        p = Path(raw)
        candidate = (p if p.is_dir() else p.parent) / "must-pass.txt"
        if candidate.is_file():
            return candidate
    return Path(default_blocklist()) / "must-pass.txt"


# -- staging: the blocklist as it would be with the new copy ----------------------------------------------------------


def _regular_only(folder: str, names: list[str]) -> set[str]:
    """copytree ignore: anything but regular files and folders (a FIFO would block the copy), and our own temp files."""
    skip = set()
    for name in names:
        try:
            mode = os.lstat(os.path.join(folder, name)).st_mode
        except OSError:
            skip.add(name)
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) or name.endswith(".tmp"):
            skip.add(name)
    return skip


def _stage(paths: Sequence[str | Path], local: Path, data: bytes, tmp: Path) -> tuple[list[Path], dict[str, str]]:
    staged: list[Path] = []
    shown: dict[str, str] = {}
    for i, raw in enumerate(paths):
        p = Path(raw)
        folder = p if p.is_dir() else p.parent
        dest = tmp / str(i)
        shutil.copytree(folder, dest, symlinks=False, ignore=_regular_only)
        (dest / FEEDS_DIR).mkdir(exist_ok=True)
        # Other URL feeds with no copy yet (a first run) stand in as empty: a warning, not a refusal of this one.
        for other in find_feeds([p])[0]:
            if other.local.parent.parent.resolve() == folder.resolve() and not other.local.exists():
                (dest / FEEDS_DIR / other.local.name).touch()
        if local.parent.parent.resolve() == folder.resolve():
            (dest / FEEDS_DIR / local.name).write_bytes(data)
        staged.append(dest if p.is_dir() else dest / p.name)
        shown[str(dest)] = str(folder)
    return staged, shown


def _real(problem: Problem, shown: dict[str, str]) -> str:
    text = str(problem)
    for staged, real in shown.items():
        text = text.replace(staged, real)
    return text


def _load_staged(paths: Sequence[str | Path], local: Path, data: bytes) -> tuple[Policy | None, list[str]]:
    with tempfile.TemporaryDirectory(prefix="enforcer-feeds-") as tmp:
        staged, shown = _stage(paths, local, data, Path(tmp))
        try:
            policy = load_policy(staged)
        except PolicyError as exc:
            return None, [_real(p, shown) for p in exc.problems if p.severity == "error"]
    return policy, []


def _load_current(paths: Sequence[str | Path]) -> Policy | None:
    try:
        return load_policy(list(paths))
    except PolicyError:
        return None  # e.g. a feed with no local copy yet: nothing it lists is blocked today


def _copy_names(local: Path) -> list[str] | None:
    try:
        text = read_regular(local, DEFAULT_LIMITS.feed_bytes).decode("utf-8")
    except (Unreadable, UnicodeDecodeError):
        return None
    return parse_feed(text, str(local), [])


# -- one feed ---------------------------------------------------------------------------------------------------------


async def update_feed(
    spec: FeedSpec, paths: Sequence[str | Path], must_pass: Sequence[str], opts: UpdateOptions
) -> FeedResult:
    result = await _update_feed(spec, paths, must_pass, opts)
    level = logging.INFO if result.result in ("updated", "unchanged", "would_update") else logging.WARNING
    log.log(level, "feed %s (%s): %s: %s", spec.key, spec.url, result.result, result.message)
    if opts.record is not None:
        opts.record(spec, "updated" if result.result == "would_update" else result.result)
    return result


async def _update_feed(
    spec: FeedSpec, paths: Sequence[str | Path], must_pass: Sequence[str], opts: UpdateOptions
) -> FeedResult:
    local = spec.local
    # One update of a feed at a time (the resolver's schedule and an operator's run): two at once could leave the
    # copy from one and its metadata from the other, and a later 304 would then vouch for the wrong copy.
    lock = await asyncio.to_thread(_lock, local) if not opts.dry_run else None
    try:
        have_copy = local.is_file()
        meta = await asyncio.to_thread(_trusted_meta, local) if have_copy else Meta()
        try:
            got = await fetch(
                spec.url,
                etag=meta.etag,
                last_modified=meta.last_modified,
                timeout=opts.timeout,
                max_bytes=opts.max_bytes,
                cafile=opts.cafile,
            )
        except FetchError as exc:
            return FeedResult(spec, "failed", f"{exc}; {_kept(have_copy)}", retry_after=exc.retry_after)
        # Everything after the download parses, loads the whole policy twice and writes files: a worker thread, so
        # a scheduled update (--feeds-refresh) never blocks the resolver's event loop.
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, _judge, spec, list(paths), must_pass, opts.dry_run, got, meta, have_copy
            )
        except OSError as exc:  # a read-only folder, a full disk: the swap is atomic, so the copy is the old one
            where = exc.filename or local
            return FeedResult(spec, "failed", f"cannot write {where}: {exc.strerror or exc}; {_kept(have_copy)}")
    finally:
        if lock is not None:
            lock.close()  # releases the flock


def _kept(have_copy: bool) -> str:
    return "the last good copy is kept" if have_copy else "there is no local copy yet"


def _lock(local: Path) -> Any:
    """An exclusive flock on ``<local>.lock`` (waits for another update of the feed), or None where the folder cannot
    hold one (read-only: the update then fails on its write, with the reason)."""
    import fcntl

    try:
        fh = open(local.with_suffix(".lock"), "a")  # noqa: SIM115 - held until the update ends
    except OSError:
        return None
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
    except OSError:
        fh.close()
        return None
    return fh


def _trusted_meta(local: Path) -> Meta:
    """The copy's metadata, when it describes the copy (its sha256): validators of another copy would make the server
    answer 304 for content the copy does not hold. Otherwise an empty Meta: the next download is unconditional."""
    meta = read_meta(local)
    if meta.sha256 is None:
        return Meta()
    try:
        digest = hashlib.sha256(read_regular(local, DEFAULT_LIMITS.feed_bytes)).hexdigest()
    except Unreadable:
        return Meta()
    return meta if digest == meta.sha256 else Meta()


def _judge(
    spec: FeedSpec,
    paths: list[str | Path],
    must_pass: Sequence[str],
    dry_run: bool,
    got: Fetched,
    meta: Meta,
    have_copy: bool,
) -> FeedResult:
    local = spec.local
    now = time.time()
    if got.status == 304:
        if not have_copy or not (meta.etag or meta.last_modified):
            # Not modified since... nothing: no validator was sent, so a 304 confirms no copy.
            return FeedResult(spec, "failed", f"HTTP 304 to a request without validators; {_kept(have_copy)}")
        if not dry_run:
            meta.checked_at = now
            write_meta(local, meta)
        return FeedResult(spec, "unchanged", "not modified (304)")
    digest = hashlib.sha256(got.body).hexdigest()
    if spec.sha256 is not None and digest != spec.sha256:
        return FeedResult(
            spec, "refused", f"content changed: sha256 {digest} does not match the pin {spec.sha256}; review the "
            "new content and update the pin, or keep the last good copy"
        )  # fmt: skip
    try:
        text = got.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return FeedResult(spec, "refused", f"not UTF-8 text: {exc.reason}")
    problems: list[Problem] = []
    names = parse_feed(text, spec.url, problems)
    if names is None:
        bad = [p for p in problems if p.severity == "error"]
        return FeedResult(spec, "refused", f"{error_count(bad)} invalid line(s)", problems=[str(p) for p in bad])
    if not names:
        return FeedResult(spec, "refused", "the new copy has no names (an empty feed never replaces a list)")
    old_names = _copy_names(local) if have_copy else None
    diff = diff_names(old_names, names)
    refusal = _unsafe_change(spec, have_copy, old_names, diff)
    if refusal is not None:
        return refusal
    if have_copy and digest == meta.sha256:
        if not dry_run:
            meta.checked_at = now
            meta.etag, meta.last_modified = got.etag, got.last_modified
            write_meta(local, meta)
        return FeedResult(spec, "unchanged", "same content", diff)
    if old_names is not None and spec.sha256 is None and diff.share > spec.max_change:
        return FeedResult(
            spec, "refused", f"{diff.share:.0%} of the names changed (+{len(diff.added)} -{len(diff.removed)} of "
            f"{diff.old_count}), above max_change {spec.max_change:.0%}", diff
        )  # fmt: skip
    new_policy, errors = _load_staged(paths, local, got.body)
    if new_policy is None:
        return FeedResult(spec, "refused", "the blocklist does not load with the new copy", diff, problems=errors)
    old_policy = _load_current(paths)
    flipped = verdict_changes(old_policy, new_policy, must_pass)
    if flipped:
        listed = ", ".join(name for name, _rule in flipped)
        return FeedResult(spec, "refused", f"would block must-pass name(s): {listed}", diff, flipped)
    if dry_run:
        return FeedResult(spec, "would_update", f"+{len(diff.added)} -{len(diff.removed)} names (dry run)", diff)
    swap(local, got.body)
    write_meta(local, Meta(spec.url, got.etag, got.last_modified, digest, len(names), now, now))
    return FeedResult(spec, "updated", f"+{len(diff.added)} -{len(diff.removed)} names, {len(names)} in all", diff)


def _unsafe_change(spec: FeedSpec, have_copy: bool, old_names: list[str] | None, diff: FeedDiff) -> FeedResult | None:
    """A refusal for a new copy that cannot be compared with the local one, or that adds a public suffix."""
    if have_copy and not old_names and spec.sha256 is None:
        # max_change compares with the copy: one that is empty or no longer reads (a hand edit, an older release's)
        # would let any new copy in unchecked. Deleting it takes the next download whole, as the first one was.
        return FeedResult(
            spec, "refused", f"the local copy {spec.local} is empty or does not read as a feed, so the change cannot "
            "be checked against max_change: look at it, or delete it to take the new copy whole"
        )  # fmt: skip
    broad = lint.public_feed_names(diff.added)
    if broad:
        # A public suffix blocks every name under it (org: wikipedia.org too); must-pass.txt only catches it when
        # one of its names happens to sit under that suffix.
        shown = ", ".join(broad[:5]) + (f" and {len(broad) - 5} more" if len(broad) > 5 else "")
        return FeedResult(
            spec, "refused", f"adds over-broad entr{'y' if len(broad) == 1 else 'ies'} {shown}: a public suffix "
            "blocks every name under it", diff
        )  # fmt: skip
    return None


async def update_all(
    paths: Sequence[str | Path], must_pass: Sequence[str], opts: UpdateOptions, specs: Sequence[FeedSpec] | None = None
) -> list[FeedResult]:
    """Every feed of ``paths`` (or ``specs``), one after the other (each check loads the whole blocklist)."""
    if specs is None:
        specs, _problems = find_feeds(paths)
    return [await update_feed(spec, paths, must_pass, opts) for spec in specs]


def result_lines(res: FeedResult, *, limit: int = 20) -> list[str]:
    """The human-readable report of one feed: the verdict line, then the diff and the reasons."""
    out = [f"{res.spec.url} [{res.spec.key}]: {res.result}: {res.message}"]
    out += [f"  {p}" for p in res.problems]
    for name, rule in res.flipped:
        out.append(f"  must-pass {name} would be blocked by {rule}")
    d = res.diff
    if d is not None and (d.added or d.removed):
        for sign, names in (("+", d.added), ("-", d.removed)):
            out += [f"  {sign} {n}" for n in names[:limit]]
            if len(names) > limit:
                out.append(f"  {sign} ... {len(names) - limit} more")
    return out


def as_dict(res: FeedResult) -> dict[str, Any]:
    d = res.diff
    return {
        "feed": res.spec.key,
        "url": res.spec.url,
        "result": res.result,
        "message": res.message,
        "added": d.added if d else [],
        "removed": d.removed if d else [],
        "must_pass_blocked": [name for name, _ in res.flipped],
        "problems": res.problems,
    }
