"""One log line per block, rate-limited: what an admin reading the service log sees of the blocks.

``BlockLog.blocked(component, app, rule_id, source, target, client)`` writes, at INFO, at most one line per
(component, app) every ``interval`` seconds (10 s by default), and counts the blocks held back in the next line::

    blocked: dns weixin.qq.com for 10.0.0.7 (app wechat, rule wechat:domain:qq.com, blocklists/wechat.yaml:12)
    (41 similar line(s) held back in the last 10 s)

The events file (enforcer/events.py) has every hit; this line only tells the admin that blocking happens, and on
what, without a client being able to flood the log: the keys are the policy's apps (bounded), never a name or an
address. The resolver (enforcer/dns/observe.py ``Observer.hit``) and the proxy (enforcer/proxy/runtime.py ``_hit``)
share it; monitor hits (not enforced) are not logged here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("enforcer.blocks")

BLOCK_LOG_INTERVAL = 10.0


class BlockLog:
    """The limiter of enforcer/dns/observe.py ``RateLimitedLog``, keyed by (component, app), with the line built
    only when it is written (a block that is held back costs a dict look-up and a clock read)."""

    def __init__(self, interval: float = BLOCK_LOG_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        # (component, app) -> [when the next line may be written, blocks held back since the last one]
        self._state: dict[tuple[str, str], list[float]] = {}

    def blocked(self, component: str, app: str, rule_id: str, source: str, target: str, client: str | None) -> bool:
        """Log this block now (True) or count it for the next line (False)."""
        now = self.clock()
        key = (component, app)
        state = self._state.get(key)
        if state is not None and now < state[0]:  # the usual case on a busy resolver: one compare, one increment
            state[1] += 1
            return False
        # A line is due: the next one in an interval from now, whether or not this one is written (with INFO off,
        # the level is read once per interval and app, not per block).
        if state is None:
            if len(self._state) > 1024:  # apps come from the policy; a bound all the same
                self._state.clear()
            held = 0
            self._state[key] = [now + self.interval, 0]
        else:  # updated in place: a caller holding it (``state``) keeps counting into the live one
            held = int(state[1])
            state[0], state[1] = now + self.interval, 0
        if not log.isEnabledFor(logging.INFO):
            return False
        msg = "blocked: %s %s for %s (app %s, rule %s, %s)"
        args: tuple[object, ...] = (component, target, client or "?", app, rule_id, source)
        if held:
            msg += " (%d similar line(s) held back in the last %g s)"
            args = (*args, held, self.interval)
        log.info(msg, *args)
        return True

    def state(self, component: str, app: str) -> list[float] | None:
        """What ``blocked`` keeps for (component, app): ``[when the next line may be written, blocks held back since
        the last one]`` (updated in place), or None before the first line. A hot path may hold it and count a
        held-back block itself, ``state[1] += 1`` while ``clock() < state[0]``, calling ``blocked`` only when a line
        is due (enforcer/dns/observe.py)."""
        return self._state.get((component, app))


BLOCKS = BlockLog()  # the process's one limiter, shared by whatever component runs in it
