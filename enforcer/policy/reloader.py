"""Keep the active ``Policy`` current: watch the blocklist files (and their include feeds), reload on SIGHUP.

A reload parses in a worker thread (a 1M-name feed takes seconds) and then swaps one reference, so a query in flight
sees either the old or the new policy, never a mix, and none waits. A broken edit keeps the last good policy, logs each
``PATH:LINE:COL: message`` and counts ``enforcer_policy_reloads_total{result="failure"}``.

Watching polls ``stat`` of the few files once a second: portable, cheap, and it sees edits made by editors that
replace files (new inode) as well as in-place writes. ``stat`` never opens a file and the loader reads only regular
files of bounded size (``bounded.read_regular``), so a FIFO or a device in the folder or as an include is one
failed reload, never a wedged watcher: the next good edit is applied as usual. Warnings (duplicate, shadowed,
over-broad rules) are logged after every successful load and never refuse the policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..metrics import POLICY_LAST_RELOAD, POLICY_RELOADS_TOTAL, Metrics
from .blocklist import load_policy
from .bounded import DEFAULT_LIMITS, Limits
from .matcher import Policy
from .model import PolicyError

log = logging.getLogger("enforcer.policy")

Snapshot = tuple[tuple[str, int, int, int], ...]


class PolicyHolder:
    """The one mutable reference to the active policy, plus how to refresh it."""

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        *,
        metrics: Metrics | None = None,
        on_change: Callable[[Policy], None] | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
        self.metrics = metrics
        self.limits = limits
        self.on_change = on_change
        self.last_error: str | None = None
        self._lock = threading.Lock()  # one build at a time (watcher and SIGHUP may race)
        # The first load must succeed: PolicyError propagates.
        self.policy: Policy = load_policy(self.paths, limits=limits)
        self._snapshot = self.snapshot()
        self._record_success(self.policy)

    # -- reload -----------------------------------------------------------------------------------------------------
    def reload(self) -> bool:
        """Rebuild the policy now (blocking). True when a new policy is active."""
        with self._lock:
            snap = self.snapshot()
            try:
                new = load_policy(self.paths, limits=self.limits)
            except PolicyError as exc:
                self._snapshot = snap
                errors = [str(p) for p in exc.problems if p.severity == "error"]
                self.last_error = errors[0] if errors else str(exc)
                for line in errors:
                    log.error("%s", line)
                log.error(
                    "policy reload failed (%d error(s)); keeping the last good policy %s",
                    len(errors),
                    self.policy.fingerprint[:12],
                )
                if self.metrics is not None and POLICY_RELOADS_TOTAL in self.metrics:
                    self.metrics[POLICY_RELOADS_TOTAL].labels("failure").inc()
                return False
            except Exception as exc:  # an unexpected bug must not take the service down with it
                self._snapshot = snap
                self.last_error = f"internal error: {exc!r}"
                log.exception("policy reload crashed; keeping the last good policy")
                if self.metrics is not None and POLICY_RELOADS_TOTAL in self.metrics:
                    self.metrics[POLICY_RELOADS_TOTAL].labels("failure").inc()
                return False
            self._snapshot = snap
            old = self.policy
            self.policy = new
            self.last_error = None
            self._record_success(new)
            if new.fingerprint != old.fingerprint:
                log.info("policy reloaded: fingerprint %s -> %s", old.fingerprint[:12], new.fingerprint[:12])
            if self.on_change is not None:
                self.on_change(new)
            return True

    async def reload_async(self) -> bool:
        return await asyncio.get_running_loop().run_in_executor(None, self.reload)

    def _record_success(self, policy: Policy) -> None:
        for w in policy.warnings:
            log.warning("%s", w)
        if self.metrics is not None:
            if POLICY_RELOADS_TOTAL in self.metrics:
                self.metrics[POLICY_RELOADS_TOTAL].labels("success").inc()
            if POLICY_LAST_RELOAD in self.metrics:
                self.metrics[POLICY_LAST_RELOAD].set(time.time())
            self.metrics.set_policy(policy)

    # -- change detection -----------------------------------------------------------------------------------------
    def watched_files(self) -> list[Path]:
        files: list[Path] = []
        for p in self.paths:
            if p.is_dir():
                files.extend(sorted(x for x in p.iterdir() if x.suffix in (".yaml", ".yml")))
            else:
                files.append(p)
        for rule in self.policy.rules:
            if rule.kind == "include":
                yaml_path = Path(rule.source.rsplit(":", 1)[0])
                files.append(yaml_path.parent / rule.value)
        return files

    def snapshot(self) -> Snapshot:
        out = []
        for f in self.watched_files() if hasattr(self, "policy") else []:
            try:
                st = f.stat()
                out.append((str(f), st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append((str(f), -1, -1, -1))
        return tuple(out)

    def changed(self) -> bool:
        return self.snapshot() != self._snapshot

    async def watch(self, interval: float = 1.0, settle: float = 0.2) -> None:
        """Poll for changes until cancelled; reload (off the loop) when a file changed and stayed still."""
        while True:
            await asyncio.sleep(interval)
            try:
                if not self.changed():
                    continue
                # Editors write in several steps: wait until the files stop changing.
                snap = self.snapshot()
                await asyncio.sleep(settle)
                if self.snapshot() != snap:
                    continue
                await self.reload_async()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("policy watcher error (watching continues)")

    def install_sighup(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Reload on SIGHUP (main thread only). Returns False where signals cannot be installed."""
        tasks: set[asyncio.Task[bool]] = set()

        def on_hup() -> None:
            log.info("SIGHUP: reloading the policy")
            task = loop.create_task(self.reload_async())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, on_hup)
            return True
        return False
