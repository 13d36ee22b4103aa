"""Keep the active ``Policy`` current: watch the blocklist files (and their include feeds), reload on SIGHUP.

A reload parses in a worker thread (a 1M-name feed takes seconds) and then swaps one reference, so a query in flight
sees either the old or the new policy, never a mix, and none waits. A broken edit keeps the last good policy, logs each
``PATH:LINE:COL: message`` and counts ``enforcer_policy_reloads_total{result="failure"}``.

Watching polls ``stat`` of the few files once a second: portable, cheap, and it sees edits made by editors that
replace files (new inode) as well as in-place writes. ``stat`` never opens a file and the loader reads only regular
files of bounded size (``bounded.read_regular``), so a FIFO or a device in the folder or as an include is one
failed reload, never a wedged watcher: the next good edit is applied as usual. Warnings (duplicate, shadowed,
over-broad rules) are logged after every successful load and never refuse the policy.

Every load says what happened, at levels an admin leaves on: ``policy loaded: N apps (...), M rules from FILES in X
ms`` (INFO) on the first load and on each reload; a refused reload is the error lines, then one ``policy reload
refused: FIRST ERROR; keeping the last good policy ...`` (ERROR). An app that appears or disappears is a WARNING line
naming the app and its file: deleting ``wechat.yaml`` is no silent un-ban.

Required apps (``require_apps``, from ``--require-app``): a policy that lacks one of them is refused like a broken
edit (the last good policy stays, ``enforcer_policy_reloads_total{result="failure"}`` counts it, one line names the
missing app and where it was). ``None`` means "the apps of the first load" (the CLIs' default: a running service
never loses an app it started with); an empty list turns the check off. At first start an explicit list is checked
too: ``RequiredAppError`` (a ``PolicyError``) with one line, so the service does not start.

- ``parse_required_apps(text)``: the ``--require-app`` value (comma-separated; ``''`` -> ``[]``; ``None`` stays).
- ``missing_apps(policy, required)``: the required app ids the policy lacks (the proxy CLI checks before mitmdump);
  ``required_app_error(paths, missing)``: the refusal as a ``RequiredAppError``.
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
from .feeds import local_copy
from .matcher import Policy
from .model import PolicyError, Problem

log = logging.getLogger("enforcer.policy")


class _RequiredProblem(Problem):
    """A required app is missing: the line names the app and where the policy was read, not a YAML position."""

    __slots__ = ()

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class RequiredAppError(PolicyError):
    """The policy lacks an app named by ``--require-app``."""


def parse_required_apps(text: str | Sequence[str] | None) -> list[str] | None:
    """``--require-app`` (``wechat,kaspersky``; repeated flags or a YAML list too) -> app ids; ``''`` -> ``[]``."""
    if text is None:
        return None
    items = [text] if isinstance(text, str) else list(text)
    return sorted({a.strip() for item in items for a in str(item).split(",") if a.strip()})


def missing_apps(policy: Policy, required: Sequence[str]) -> list[str]:
    return [a for a in required if a not in policy.apps]


def required_app_error(
    paths: Sequence[str | Path], missing: list[str], known: dict[str, str] | None = None
) -> RequiredAppError:
    """The one-line refusal: which required apps are missing, where they were (when known), which paths were read."""
    known = known or {}
    where = ", ".join(str(p) for p in paths)
    parts = []
    for app in missing:
        was = f" (was in {known[app]})" if app in known else ""
        parts.append(f"'{app}'{was}")
    msg = f"required app {', '.join(parts)} missing from the policy (--require-app)"
    return RequiredAppError([_RequiredProblem(where, 0, 0, msg)])


def describe(policy: Policy, took: float) -> str:
    """``N apps (a, b), M rules from FILES in X ms``: what a load produced, for one log line."""
    files = sorted({app.path for app in policy.apps.values()})
    apps = ", ".join(sorted(policy.apps))
    return f"{len(policy.apps)} apps ({apps}), {len(policy.rules)} rules from {', '.join(files)} in {took * 1e3:.0f} ms"


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
        require_apps: Sequence[str] | None = (),
    ) -> None:
        self.paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
        self.metrics = metrics
        self.limits = limits
        self.on_change = on_change
        self.last_error: str | None = None
        self._lock = threading.Lock()  # one build at a time (watcher and SIGHUP may race)
        # The first load must succeed: PolicyError propagates.
        started = time.perf_counter()
        policy = load_policy(self.paths, limits=limits)
        took = time.perf_counter() - started
        self.require_apps = sorted(policy.apps) if require_apps is None else list(require_apps)
        missing = missing_apps(policy, self.require_apps)
        if missing:
            raise required_app_error(self.paths, missing, {})
        self.policy: Policy = policy
        self._snapshot = self.snapshot()
        self._record_success(self.policy)
        log.info("policy loaded: %s; fingerprint %s", describe(policy, took), policy.fingerprint[:12])
        if self.require_apps:
            log.info("policy: required apps %s (--require-app)", ",".join(self.require_apps))

    # -- reload -----------------------------------------------------------------------------------------------------
    def reload(self) -> bool:
        """Rebuild the policy now (blocking). True when a new policy is active."""
        with self._lock:
            snap = self.snapshot()
            started = time.perf_counter()
            try:
                new = load_policy(self.paths, limits=self.limits)
                missing = missing_apps(new, self.require_apps)
                if missing:
                    known = {a: p.path for a, p in self.policy.apps.items()}
                    raise required_app_error(self.paths, missing, known)
            except PolicyError as exc:
                self._snapshot = snap
                errors = [str(p) for p in exc.problems if p.severity == "error"]
                self.last_error = errors[0] if errors else str(exc)
                for line in errors[1:]:
                    log.error("%s", line)
                log.error(
                    "policy reload refused: %s%s; keeping the last good policy %s (%d apps, %d rules)",
                    self.last_error,
                    f" (and {len(errors) - 1} more error(s) above)" if len(errors) > 1 else "",
                    self.policy.fingerprint[:12],
                    len(self.policy.apps),
                    len(self.policy.rules),
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
            took = time.perf_counter() - started
            self._snapshot = snap
            old = self.policy
            self.policy = new
            self.last_error = None
            self._record_success(new)
            if new.fingerprint != old.fingerprint:
                change = f"fingerprint {old.fingerprint[:12]} -> {new.fingerprint[:12]}"
            else:
                change = f"fingerprint {new.fingerprint[:12]} (unchanged)"
            log.info("policy reloaded: %s; %s", describe(new, took), change)
            for app in sorted(set(old.apps) - set(new.apps)):
                log.warning("policy: app '%s' removed (was in %s): no longer blocked", app, old.apps[app].path)
            for app in sorted(set(new.apps) - set(old.apps)):
                log.warning("policy: app '%s' added (from %s)", app, new.apps[app].path)
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
                # A URL feed's rule value is its URL; the file that changes is its local copy (feeds.local_copy).
                url = "://" in rule.value
                files.append(local_copy(yaml_path.parent, rule.value) if url else yaml_path.parent / rule.value)
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


REQUIRE_APP_HELP = (
    "apps the policy must keep, comma-separated (wechat,kaspersky); a policy without one is refused like a broken "
    "edit, and at start the command stops (default: the apps of the first load; '' turns the check off)"
)
