"""URL feeds that update themselves safely (issue 17): ``enforcer feeds update`` and ``--feeds-refresh``.

- ``fetch``: one bounded HTTP(S) download (aiohttp: timeouts, size cap, TLS verification with an optional private CA,
  ``If-None-Match``/``If-Modified-Since`` from the stored validators; a cut download is an error, never a feed).
- ``store``: the local copy (``feeds/<hash>.txt`` beside the blocklist, enforcer/policy/feeds.py) and its validators
  (``.json`` beside it); the atomic swap.
- ``diff``: added/removed names per feed, the share changed, and the held-out safety names (``must-pass.txt``) whose
  verdict the new copy would change.
- ``update``: find the URL includes of a blocklist, fetch each, check the result with the loader (the checks of
  ``enforcer check``), diff, and swap only when every check passes; a failing feed keeps its last good copy.
- ``schedule``: the same off the hot path, every feed on its own ``refresh``, with the feed metrics.
- ``cli``: ``enforcer feeds update [--blocklist PATH] [--dry-run] [--cafile FILE]``.
"""
