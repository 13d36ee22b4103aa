"""Every Prometheus metric enforcer exposes, defined once; the registry is passed in.

``SPECS`` is the single table of names, types, help texts and label names (docker/ dashboards and alert rules are
checked against it). ``Metrics(registry)`` builds the prometheus_client objects from it. Components that count on a
hot path (the resolver, the proxy) may use ``LocalCounter``: a plain dict of ints read at scrape time, with no lock,
for code that runs on one event-loop thread.

Labels are bounded (app, category, component, action, outcome, result, kind, window, upstream, transport): names,
URLs and client addresses go into hit events, never into labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from .net import split_host_port

# Label names.
COMPONENT = "component"
APP = "app"
CATEGORY = "category"
ACTION = "action"
OUTCOME = "outcome"
RESULT = "result"
KIND = "kind"
WINDOW = "window"
UPSTREAM = "upstream"
REASON = "reason"
FEED = "feed"  # a URL feed's short name (its local copy's stem: 16 hex digits), one per include: a bounded set
TRANSPORT = "transport"  # dot | doh | doq (encrypted DNS listeners)

# Metric names (as exposed; counters carry their _total suffix here).
BLOCKED_TOTAL = "enforcer_blocked_total"
MONITORED_TOTAL = "enforcer_monitored_total"
DNS_QUERIES_TOTAL = "enforcer_dns_queries_total"
DNS_QUERY_DURATION = "enforcer_dns_query_duration_seconds"
DNS_UPSTREAM_ERRORS_TOTAL = "enforcer_dns_upstream_errors_total"
DNS_UPSTREAM_HEALTHY = "enforcer_dns_upstream_healthy"
DNS_CACHE_ENTRIES = "enforcer_dns_cache_entries"
DNS_TCP_CONNECTIONS = "enforcer_dns_tcp_connections"
DNS_ENCRYPTED_QUERIES_TOTAL = "enforcer_dns_encrypted_queries_total"
DNS_ENCRYPTED_CONNECTIONS_TOTAL = "enforcer_dns_encrypted_connections_total"
DNS_ENCRYPTED_CONNECTIONS = "enforcer_dns_encrypted_connections_open"
DNS_ENCRYPTED_RELOADS_TOTAL = "enforcer_dns_encrypted_reloads_total"
DNS_WORKERS = "enforcer_dns_workers"
PROXY_FLOWS_TOTAL = "enforcer_proxy_flows_total"
POLICY_RULES = "enforcer_policy_rules"
POLICY_RELOADS_TOTAL = "enforcer_policy_reloads_total"
POLICY_INFO = "enforcer_policy_info"
POLICY_LAST_RELOAD = "enforcer_policy_last_reload_timestamp_seconds"
EVENTS_WRITTEN_TOTAL = "enforcer_events_written_total"
EVENTS_DROPPED_TOTAL = "enforcer_events_dropped_total"
EVENTS_QUEUED = "enforcer_events_queued"
NONCOMPLIANT_CLIENTS = "enforcer_noncompliant_clients"
LAST_BLOCK_TIMESTAMP = "enforcer_last_block_timestamp_seconds"
ANALYST_EVENTS_INGESTED_TOTAL = "enforcer_analyst_events_ingested_total"
ANALYST_INGEST_ERRORS_TOTAL = "enforcer_analyst_ingest_errors_total"
ANALYST_EVENTS_DUPLICATE_TOTAL = "enforcer_analyst_events_duplicate_total"
ANALYST_INGEST_FAILURES_TOTAL = "enforcer_analyst_ingest_failures_total"
ANALYST_EVENTS_STORED = "enforcer_analyst_events_stored"
ANALYST_FILES_SKIPPED_TOTAL = "enforcer_analyst_files_skipped_total"
ANALYST_HOST_REFUSED_TOTAL = "enforcer_analyst_host_refused_total"
ANALYST_LEASE_LINES_SKIPPED_TOTAL = "enforcer_analyst_lease_lines_skipped_total"
FEED_UPDATES_TOTAL = "enforcer_feed_updates_total"
FEED_AGE = "enforcer_feed_age_seconds"
FEED_REFRESH = "enforcer_feed_refresh_seconds"

# Resolver latency: most answers take tens of microseconds, forwarded ones up to the 2 s upstream timeout.
DNS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None


SPECS: dict[str, MetricSpec] = {
    s.name: s
    for s in (
        MetricSpec(
            BLOCKED_TOTAL, "counter", "Blocked attempts (enforced policy hits).", (COMPONENT, APP, CATEGORY, ACTION)
        ),
        MetricSpec(
            MONITORED_TOTAL,
            "counter",
            "Policy hits let through in monitor mode (before the effective date or from an exempt client).",
            (COMPONENT, APP, CATEGORY, ACTION),
        ),
        MetricSpec(
            DNS_QUERIES_TOTAL,
            "counter",
            "DNS queries by outcome (blocked, forwarded, cached, servfail, refused, formerr, dropped, ...).",
            (OUTCOME,),
        ),
        MetricSpec(DNS_QUERY_DURATION, "histogram", "Time to answer a DNS query.", (), DNS_BUCKETS),
        MetricSpec(
            DNS_UPSTREAM_ERRORS_TOTAL, "counter", "Failed upstream DNS exchanges (timeouts, errors).", (UPSTREAM,)
        ),
        MetricSpec(DNS_UPSTREAM_HEALTHY, "gauge", "1 when the upstream is considered healthy.", (UPSTREAM,)),
        MetricSpec(DNS_CACHE_ENTRIES, "gauge", "Entries in the resolver cache."),
        MetricSpec(DNS_TCP_CONNECTIONS, "gauge", "Open DNS-over-TCP client connections."),
        # Encrypted DNS (enforcer/dns/encrypted.py): every query is also in enforcer_dns_queries_total{outcome}.
        MetricSpec(
            DNS_ENCRYPTED_QUERIES_TOTAL,
            "counter",
            "DNS queries received over DoT, DoH and DoQ (their outcomes are in enforcer_dns_queries_total).",
            (TRANSPORT,),
        ),
        MetricSpec(
            DNS_ENCRYPTED_CONNECTIONS_TOTAL,
            "counter",
            "Encrypted DNS connections and refusals by outcome (accepted, refused, source_limit, rejected, "
            "handshake_timeout, handshake_failed, idle_timeout, client_id_refused, stream_limit, bad_request, "
            "protocol_error).",
            (TRANSPORT, OUTCOME),
        ),
        MetricSpec(DNS_ENCRYPTED_CONNECTIONS, "gauge", "Open encrypted DNS client connections.", (TRANSPORT,)),
        MetricSpec(
            DNS_ENCRYPTED_RELOADS_TOTAL,
            "counter",
            "Re-reads of the TLS certificate and the ClientID files after a change, by kind (certificate, "
            "client_ids) and result (success; failure: the last good one is kept).",
            (KIND, RESULT),
        ),
        MetricSpec(DNS_WORKERS, "gauge", "Resolver worker processes answering (enforcer dns --workers)."),
        MetricSpec(
            PROXY_FLOWS_TOTAL,
            "counter",
            "Proxy flows by outcome (allowed, blocked, monitored, invalid, error; handshake_failed: a client "
            "refused the TLS of a block-page tunnel).",
            (OUTCOME,),
        ),
        MetricSpec(POLICY_RULES, "gauge", "Rules in the active policy (include feeds count their names).", (APP, KIND)),
        MetricSpec(POLICY_RELOADS_TOTAL, "counter", "Policy (re)loads by result (success, failure).", (RESULT,)),
        MetricSpec(
            POLICY_INFO, "gauge", "Always 1; the label carries the active policy fingerprint.", ("fingerprint",)
        ),
        MetricSpec(POLICY_LAST_RELOAD, "gauge", "Unix time of the last successful policy load."),
        MetricSpec(EVENTS_WRITTEN_TOTAL, "counter", "Hit events written to the event log."),
        MetricSpec(EVENTS_DROPPED_TOTAL, "counter", "Hit events dropped (queue full or write error)."),
        MetricSpec(EVENTS_QUEUED, "gauge", "Hit events waiting to be written."),
        MetricSpec(
            NONCOMPLIANT_CLIENTS,
            "gauge",
            "Clients with at least one enforced blocked attempt in the window (1h, 24h, 7d).",
            (APP, WINDOW),
        ),
        MetricSpec(LAST_BLOCK_TIMESTAMP, "gauge", "Unix time of the latest blocked attempt per app.", (APP,)),
        MetricSpec(ANALYST_EVENTS_INGESTED_TOTAL, "counter", "Events stored by the analyst."),
        MetricSpec(ANALYST_INGEST_ERRORS_TOTAL, "counter", "Event lines skipped by the analyst.", (REASON,)),
        MetricSpec(
            ANALYST_EVENTS_DUPLICATE_TOTAL, "counter", "Events read again (same event.id) and not stored twice."
        ),
        MetricSpec(
            ANALYST_INGEST_FAILURES_TOTAL,
            "counter",
            "Ingest polls that failed (a full disk, a store that cannot be written); /healthz names the last error.",
        ),
        MetricSpec(ANALYST_EVENTS_STORED, "gauge", "Events in the analyst's store."),
        MetricSpec(
            ANALYST_FILES_SKIPPED_TOTAL,
            "counter",
            "Event files the analyst refused to read (not a regular file, over --max-file-size).",
            (REASON,),
        ),
        MetricSpec(ANALYST_HOST_REFUSED_TOTAL, "counter", "Analyst requests refused for a foreign Host header."),
        MetricSpec(
            ANALYST_LEASE_LINES_SKIPPED_TOTAL,
            "counter",
            "Malformed lines of the --leases files skipped by the analyst.",
        ),
        MetricSpec(
            FEED_UPDATES_TOTAL,
            "counter",
            "URL feed update attempts by result (updated, unchanged, refused, failed).",
            (FEED, RESULT),
        ),
        MetricSpec(FEED_AGE, "gauge", "Seconds since the feed's local copy was last confirmed current.", (FEED,)),
        MetricSpec(
            FEED_REFRESH, "gauge", "The feed's refresh interval (include: refresh), for the age alert.", (FEED,)
        ),
    )
}


def _base_name(spec: MetricSpec) -> str:
    # prometheus_client appends _total to counters itself.
    return spec.name[: -len("_total")] if spec.kind == "counter" and spec.name.endswith("_total") else spec.name


def make_metric(spec: MetricSpec, registry: CollectorRegistry) -> Any:
    name = _base_name(spec)
    if spec.kind == "counter":
        return Counter(name, spec.help, spec.labels, registry=registry)
    if spec.kind == "gauge":
        return Gauge(name, spec.help, spec.labels, registry=registry)
    if spec.kind == "histogram":
        return Histogram(
            name, spec.help, spec.labels, registry=registry, buckets=spec.buckets or Histogram.DEFAULT_BUCKETS
        )
    raise ValueError(f"unknown metric kind {spec.kind}")


class Metrics:
    """prometheus_client objects for the given metric names (default: all), registered in ``registry``.

    Access by name: ``m[BLOCKED_TOTAL].labels(...).inc()``; a component registers only what it exposes.
    """

    def __init__(self, registry: CollectorRegistry, names: Iterable[str] | None = None) -> None:
        self.registry = registry
        self._m: dict[str, Any] = {}
        for name in names if names is not None else SPECS:
            self._m[name] = make_metric(SPECS[name], registry)

    def __getitem__(self, name: str) -> Any:
        return self._m[name]

    def __contains__(self, name: str) -> bool:
        return name in self._m

    def set_policy(self, policy: Any) -> None:
        """Publish the active policy's rule counts and fingerprint (call after every successful load)."""
        if POLICY_RULES in self._m:
            g = self._m[POLICY_RULES]
            g.clear()
            for (app, kind), n in policy.counts.items():
                g.labels(app, kind).set(n)
        if POLICY_INFO in self._m:
            info = self._m[POLICY_INFO]
            info.clear()
            info.labels(policy.fingerprint).set(1)


class LocalCounter(Collector):
    """A counter family kept as plain ints, for single-threaded hot paths; exposed at scrape time.

    ``inc(labels_tuple)`` costs a dict update; no lock, so only one thread may increment it.
    """

    def __init__(self, name: str, registry: CollectorRegistry | None = None) -> None:
        self.spec = SPECS[name]
        self.values: dict[tuple[str, ...], float] = {}
        if registry is not None:
            registry.register(self)

    def inc(self, labels: tuple[str, ...] = (), amount: float = 1) -> None:
        values = self.values
        values[labels] = values.get(labels, 0) + amount

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(_base_name(self.spec), self.spec.help, labels=self.spec.labels)
        for labels, value in list(self.values.items()):
            family.add_metric(list(labels), value)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(_base_name(self.spec), self.spec.help, labels=self.spec.labels)


def serve_metrics(listen: str, registry: CollectorRegistry) -> tuple[Any, Any]:
    """Start the /metrics HTTP endpoint on ``HOST:PORT`` in a daemon thread; returns (server, thread)."""
    host, port = split_host_port(listen)
    return start_http_server(port, addr=host, registry=registry)
