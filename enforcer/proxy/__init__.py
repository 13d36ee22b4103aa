"""The proxy front-end: a mitmproxy addon that enforces the policy on HTTP, CONNECT, TLS and mitmproxy's DNS modes.

- ``decide``: pure decision helpers (which hosts a request names, monitor vs enforced, which TLS to decrypt).
- ``blockpage``: the escaped 403 page and its headers.
- ``addon``: ``EnforcerAddon`` (options, hooks, reload, metrics, events); loads by itself with ``mitmdump -s``.
- ``cli``: ``enforcer proxy``: validates its flags and runs mitmdump with the addon.
"""
