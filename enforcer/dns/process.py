"""One resolver process: ``run_single(settings)`` serves in this process until SIGTERM/SIGINT.

Used by ``enforcer dns`` (cli.py) with one worker and by each worker process of ``--workers N`` (workers.py); it lives
apart from both so that neither imports the other. What it owns is what only the process owner may decide: the GIL
switch interval, the GC thresholds and ``gc.freeze()`` once the policy is loaded, uvloop, the signal handlers
(SIGTERM/SIGINT stop, SIGUSR1 reopens the event file), and turning start-up errors into one line and exit status 1.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable

from ..events import install_reopen_signal
from ..policy.model import PolicyError
from .service import DnsSettings, Resolver, run_resolver


def run_single(settings: DnsSettings, started: Callable[[Resolver], None] | None = None, quiet: bool = False) -> int:
    """Serve ``settings`` in this process until SIGTERM/SIGINT; 0 on a clean stop, 1 on a start-up error."""
    # The event writer's thread serialises hit events in batches; with the default 5 ms GIL switch interval a query
    # arriving meanwhile can wait up to 5 ms for the GIL. 0.5 ms keeps p99 latency low at a negligible switch cost.
    sys.setswitchinterval(0.0005)
    # Answers allocate short-lived objects freed by reference counting; fewer young-generation collections and
    # rare full ones keep GC pauses out of the latency tail (cycles are still collected).
    gc.set_threshold(50_000, 20, 100)

    try:
        import uvloop
    except ImportError:  # optional: the resolver works without it, on a slower event loop
        uvloop = None  # type: ignore[assignment]

    def announce(addresses: list[str]) -> None:
        # The policy (a 100k-name feed is ~10^6 objects) and everything loaded so far live for the whole run: move
        # them out of the cyclic collector's sight, so full collections do not pause answering for tens of ms.
        gc.freeze()
        for addr in [] if quiet else addresses:
            # "HOST:PORT (dot)" for an encrypted listener (enforcer/dns/encrypted_listeners.py)
            print(f"enforcer dns: listening on {addr}" + ("" if " (" in addr else " (udp+tcp)"), flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        install_reopen_signal(loop)  # SIGUSR1: the event writer reopens its file (logrotate)
        await run_resolver(settings, stop, announce=announce, started=started)

    try:
        if uvloop is not None:
            uvloop.run(main())
        else:
            asyncio.run(main())
    except PolicyError as exc:
        for problem in exc.problems:
            if problem.severity == "error":
                print(str(problem), file=sys.stderr)
        return 1
    except OSError as exc:
        shown = str(exc.filename) if exc.filename else ""
        where = f" on {shown}" + ("" if "(--metrics)" in str(exc.strerror) else " (udp+tcp)") if shown else ""
        print(f"enforcer dns: cannot listen{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    logging.getLogger("enforcer.dns").info("stopped")
    return 0
