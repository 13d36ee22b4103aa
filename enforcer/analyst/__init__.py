"""Compliance review: which devices still try to reach a banned app after its effective date, since when, how often.

- ``records``: one event line -> the indexed fields (fast path for the writer's own lines).
- ``inventory``: CSV ``cidr,device,owner,unit``, longest-prefix match of client addresses.
- ``report``: pure aggregations, the streaming ``enforcer report`` pass and its output formats.
- ``store``: the SQLite event store (WAL, indexes, dedupe by ``event.id``, ingest offsets).
- ``ingest``: follows the JSON Lines files (appends, rotation, restarts) into the store, off the event loop.
- ``web``: the aiohttp service (dashboard, API, metrics, auth); ``start_analyst(settings)`` for ``enforcer serve``.
- ``cli``: ``enforcer analyst`` and ``enforcer report``.
"""
