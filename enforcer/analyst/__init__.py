"""Compliance review: which devices still try to reach a banned app after its effective date, since when, how often.

- ``records``: one event document -> the indexed fields (fast path for the writer's own lines); time formats.
- ``lines``: the one reader of event files and lines for ``report`` and ``ingest`` (regular files only, bounded
  lines, the rule for what counts as an event and when two lines are the same event).
- ``inventory``: CSV ``cidr,device,owner,unit``, longest-prefix match of client addresses.
- ``report``: pure aggregations, the streaming ``enforcer report`` pass and its output formats.
- ``store``: the SQLite event store (WAL, indexes, dedupe by ``event.id``, ingest offsets).
- ``ingest``: follows the JSON Lines files (appends, rotation, restarts) into the store, off the event loop.
- ``web``: the aiohttp service (dashboard, API, metrics, auth); ``start_analyst(settings)`` for ``enforcer serve``.
- ``cli``: ``enforcer analyst`` and ``enforcer report``.
"""
