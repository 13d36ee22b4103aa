"""The proxy front-end: a mitmproxy addon that enforces the policy on HTTP, CONNECT, TLS and mitmproxy's DNS modes.

- ``decide``: pure decision helpers (which hosts a request names, monitor vs enforced, which TLS to decrypt).
- ``blockpage``: the escaped 403 page (English and French, by Accept-Language) and its headers.
- ``addon``: ``EnforcerAddon``, the composition of the parts below; loads by itself with ``mitmdump -s``.
- ``lifecycle``: options, policy loading and watching, the /metrics server, shutdown.
- ``tunnel`` (CONNECT, TLS ClientHello), ``server`` (the gate before any upstream connection), ``request`` (HTTP
  requests), ``dnsmode`` (mitmproxy's DNS modes): one hook family each.
- ``runtime``: what the parts share, and the one path from a verdict to its count, event, mark and answer.
- ``responses``: the 403/400 responses and the DNS sinkhole answer.
- ``cli``: ``enforcer proxy``: validates its flags and runs mitmdump with the addon; ``logins``: the ``--auth
  htpasswd:FILE`` check (mitmproxy's proxyauth does the logins).
"""
