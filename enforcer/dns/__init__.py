"""The DNS resolver (``enforcer dns``): sinkhole the banned apps' names, forward and cache everything else.

Map: ``cli.py`` (flags, process) -> ``service.py`` (wiring; ``run_resolver``/``Resolver`` for embedding) ->
``server.py`` (UDP/TCP transports) -> ``chain.py`` (the chain, in order) -> ``sinkhole.py``, ``cache.py``,
``upstream.py``, ``response_policy.py``; ``wire.py`` (hand-written wire format), ``observe.py`` (metrics, events).
"""

# Clients allowed by default: loopback, private and CGNAT ranges, ULA and link-local IPv6. Never an open resolver.
DEFAULT_ALLOW = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
    "fe80::/10",
)
