"""The addon's options and lifecycle: what mitmproxy configures, starts and stops; no flow is judged here.

- ``load``: the options ``enforcer_blocklist`` (files/folders, comma-separated), ``enforcer_require_apps`` (apps the
  policy must keep: ``auto`` = those of the first load, ``''`` = none), ``enforcer_events`` (JSON Lines
  path), ``enforcer_metrics`` (HOST:PORT, the runtime's private registry), ``enforcer_passthrough``,
  ``enforcer_blocked_connect`` (``page``: a blocked CONNECT is accepted and its tunnel shows the block page;
  ``refuse``: 403 on the CONNECT).
- ``configure``: loads the policy (a bad one is an ``OptionsError``: mitmproxy keeps the old value), opens the event
  writer, starts the /metrics server; warns when ``connection_strategy=eager`` lets mitmproxy dial before we decide.
- ``running``: ``PolicyHolder.watch`` as a task (the reload parses in a worker thread; a broken edit keeps the last
  good policy), SIGHUP -> reload, SIGUSR1 -> the event writer reopens its file; then ``freeze_startup``
  (``gc.freeze()`` of everything loaded so far).
- ``done``: cancels the watch, stops the metrics server and closes the writer, so mitmproxy's script live-reload can
  build a fresh addon on the same port; undoes the freeze. ``client_disconnected`` records a block-page tunnel's hit
  that nothing else recorded (a client that left before any TLS or request), then drops the connection's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader
from mitmproxy.connection import Client

from enforcer.config import default_blocklist
from enforcer.events import EventWriter, install_reopen_signal, writable_problem
from enforcer.metrics import serve_metrics
from enforcer.net import split_host_port
from enforcer.policy import PolicyError
from enforcer.policy.reloader import PolicyHolder, parse_required_apps
from enforcer.proxy.decide import BLOCKED_CONNECT_MODES, PAGE
from enforcer.proxy.runtime import Runtime

log = logging.getLogger("enforcer.proxy")


class Lifecycle:
    name = "enforcer_lifecycle"

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.metrics_server: Any = None
        self.metrics_listen = ""
        self.watch_task: asyncio.Task[None] | None = None
        self._sighup_loop: asyncio.AbstractEventLoop | None = None
        self.frozen = False  # this addon moved the start-up objects out of the cyclic GC's sight (freeze_startup)

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "enforcer_blocklist",
            str,
            default_blocklist(),
            "enforcer: blocklist files or folders (comma-separated); reloaded when they change.",
        )
        loader.add_option(
            "enforcer_require_apps",
            str,
            "auto",
            "enforcer: apps the policy must keep (comma-separated); a policy without one is refused. "
            "'auto': the apps of the first load; '': no check.",
        )
        loader.add_option("enforcer_events", str, "", "enforcer: write hit events (ECS JSON Lines) to this file.")
        loader.add_option("enforcer_metrics", str, "", "enforcer: serve Prometheus /metrics on HOST:PORT.")
        loader.add_option(
            "enforcer_passthrough",
            bool,
            True,
            "enforcer: pass TLS through undecrypted unless the policy has url/store rules for its server name.",
        )
        loader.add_option(
            "enforcer_blocked_connect",
            str,
            PAGE,
            "enforcer: a CONNECT to a blocked host: 'page' accepts it without any upstream connection and answers "
            "the first request inside with the block page (the client must trust mitmproxy's CA to see it); "
            "'refuse' answers the CONNECT itself with 403.",
            choices=BLOCKED_CONNECT_MODES,
        )

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if "enforcer_blocklist" in updated or "enforcer_require_apps" in updated:
            self._configure_blocklist(opts.enforcer_blocklist)
        if "enforcer_events" in updated:
            self._configure_events(opts.enforcer_events)
        if "enforcer_metrics" in updated:
            self._configure_metrics(opts.enforcer_metrics)
        if "enforcer_passthrough" in updated:
            self.rt.passthrough = bool(opts.enforcer_passthrough)
        if "enforcer_blocked_connect" in updated:
            # mitmproxy checks choices in its UIs only; a bad --set or script value must fail here.
            if opts.enforcer_blocked_connect not in BLOCKED_CONNECT_MODES:
                raise exceptions.OptionsError(
                    f"enforcer_blocked_connect: {opts.enforcer_blocked_connect!r} is not one of "
                    + ", ".join(BLOCKED_CONNECT_MODES)
                )
            self.rt.blocked_connect = str(opts.enforcer_blocked_connect)
        if "connection_strategy" in updated and getattr(opts, "connection_strategy", "lazy") == "eager":
            log.warning(
                "enforcer: connection_strategy=eager: mitmproxy connects upstream (and may finish a TLS handshake "
                "with a blocked server) BEFORE this addon decides. Run with --set connection_strategy=lazy "
                "(`enforcer proxy` does) so blocked flows never reach the network."
            )

    def _configure_blocklist(self, value: str) -> None:
        # Several paths are comma-separated; a single existing path is taken whole, so a comma in a name works.
        whole = value.strip()
        paths = [whole] if whole and Path(whole).exists() else [p.strip() for p in value.split(",") if p.strip()]
        if not paths:
            raise exceptions.OptionsError("enforcer_blocklist: no blocklist path given")
        for p in paths:
            if not Path(p).exists():
                raise exceptions.OptionsError(f"enforcer_blocklist: {p}: no such file or directory")
        try:
            raw = str(getattr(ctx.options, "enforcer_require_apps", "auto"))
            required = None if raw.strip() == "auto" else parse_required_apps(raw)
            holder = PolicyHolder(paths, metrics=self.rt.metrics, require_apps=required)
        except PolicyError as exc:
            raise exceptions.OptionsError(f"enforcer_blocklist: invalid policy:\n{exc}") from None
        except OSError as exc:
            raise exceptions.OptionsError(f"enforcer_blocklist: {exc}") from None
        self.rt.holder = holder
        log.info("enforcer: policy %s loaded from %s: %s", holder.policy.fingerprint[:12], value, holder.policy)
        if self.watch_task is not None:  # running already: watch the new files instead
            self._stop_watch()
            self._start_watch()

    def _configure_events(self, value: str) -> None:
        if value and (problem := writable_problem(value)) is not None:
            raise exceptions.OptionsError(f"enforcer_events: {problem}")
        old = self.rt.set_writer(EventWriter(Path(value) if value else None))
        # close() joins the writer thread (it flushes what is queued): keep that off the event loop.
        threading.Thread(target=old.close, name="enforcer-events-close", daemon=True).start()

    def _configure_metrics(self, value: str) -> None:
        if value == self.metrics_listen and self.metrics_server is not None:
            return
        if value:
            try:
                split_host_port(value)
            except ValueError as exc:
                raise exceptions.OptionsError(f"enforcer_metrics: {exc}") from None
        self._stop_metrics()
        if value:
            try:
                self.metrics_server, _ = serve_metrics(value, self.rt.registry)
            except OSError as exc:
                raise exceptions.OptionsError(f"enforcer_metrics: cannot listen on {value}: {exc.strerror}") from None
            log.info("enforcer: metrics on http://%s/metrics", value)
        self.metrics_listen = value

    def _stop_metrics(self) -> None:
        server, self.metrics_server = self.metrics_server, None
        self.metrics_listen = ""
        if server is not None:
            server.shutdown()
            server.server_close()

    def running(self) -> None:
        self._start_watch()
        self.freeze_startup()

    def freeze_startup(self) -> None:
        """Move every object alive once mitmproxy runs (its modules and addons, ours, the policy: ~90,000 tracked
        objects) out of the cyclic garbage collector's sight; ``done`` undoes it.

        Why: under load mitmproxy allocates enough for a full collection every few seconds, and each walked all of
        them: 75-87 ms a pass, ~25 us a request at 500 requests/s on plain HTTP, about 2 % of the proxy's CPU and as
        much as the addon's own hooks and dispatch cost (docs/performance.md, "The proxy addon, fourth pass").
        Frozen objects are still freed by reference counting; only garbage cycles among them would stay: the policy has
        none (a replaced one is freed at once), and what ``done`` leaves behind becomes collectable again with
        ``unfreeze``. The collection first keeps start-up garbage out of the frozen set. A policy loaded later is not
        frozen (its objects are collected as before)."""
        if self.frozen:
            return
        gc.collect()
        gc.freeze()
        self.frozen = True

    def _start_watch(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        holder = self.rt.holder
        if holder is None:
            return
        self.watch_task = loop.create_task(holder.watch(), name="enforcer-policy-watch")
        if holder.install_sighup(loop):
            self._sighup_loop = loop
        install_reopen_signal(loop)  # SIGUSR1: the event writer reopens its file (logrotate)

    def _stop_watch(self) -> None:
        task, self.watch_task = self.watch_task, None
        if task is not None:
            task.cancel()
        loop, self._sighup_loop = self._sighup_loop, None
        if loop is not None:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signal.SIGHUP)

    def done(self) -> None:
        self._stop_watch()
        self._stop_metrics()
        self.rt.writer.close()
        self.rt.conns.clear()
        self.rt.open_pages.clear()
        if self.frozen:
            # A script reload drops this addon (its module is a cycle of functions and globals): collectable again.
            gc.unfreeze()
            self.frozen = False

    def client_disconnected(self, client: Client) -> None:
        try:
            self.rt.settle_page(client)
        except Exception:
            self.rt.hook_error("client_disconnected")
        finally:
            self.rt.forget(client)
