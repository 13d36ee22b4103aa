"""The metrics table: every fixed metric (docs/design.md) is in SPECS with its labels, the exposition parses with
prometheus_client's own parser (in-process and over real HTTP), LocalCounter exposes plain-int counters."""

from __future__ import annotations

import re
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from enforcer.metrics import (
    BLOCKED_TOTAL,
    DNS_QUERIES_TOTAL,
    DNS_QUERY_DURATION,
    SPECS,
    LocalCounter,
    Metrics,
    serve_metrics,
)
from tests.conftest import ROOT, free_port

# The contract's fixed names (also listed for readers in docs/design.md, "Fixed metric names").
CONTRACT_METRICS = {
    "enforcer_blocked_total": ("counter", ("component", "app", "category", "action")),
    "enforcer_dns_queries_total": ("counter", ("outcome",)),
    "enforcer_dns_query_duration_seconds": ("histogram", ()),
    "enforcer_dns_upstream_errors_total": ("counter", ("upstream",)),
    "enforcer_proxy_flows_total": ("counter", ("outcome",)),
    "enforcer_policy_rules": ("gauge", ("app", "kind")),
    "enforcer_policy_reloads_total": ("counter", ("result",)),
    "enforcer_events_written_total": ("counter", ()),
    "enforcer_events_dropped_total": ("counter", ()),
    "enforcer_noncompliant_clients": ("gauge", ("app", "window")),
}


def test_contract_metrics_are_in_specs() -> None:
    for name, (kind, labels) in CONTRACT_METRICS.items():
        assert name in SPECS, name
        assert SPECS[name].kind == kind, name
        assert SPECS[name].labels == labels, name


def test_documented_fixed_metrics_are_the_contract_ones() -> None:
    # docs/design.md "Fixed metric names" is the in-repository copy of the contract's list.
    section = (ROOT / "docs" / "design.md").read_text().split("## Fixed metric names", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(enforcer_[a-z_]+)", section))
    assert named and named <= set(CONTRACT_METRICS) <= set(SPECS)
    labelled = dict(re.findall(r"`(enforcer_[a-z_]+)(?:\{([a-z_,]+)\})?`", section))
    assert {n: tuple(v.split(",")) if v else () for n, v in labelled.items()} == {
        n: labels for n, (_, labels) in CONTRACT_METRICS.items()
    }


def test_specs_follow_naming_rules() -> None:
    bounded = {"app", "category", "component", "action", "outcome", "result", "kind", "window", "upstream", "reason",
               "fingerprint", "transport", "feed"}  # fmt: skip
    for name, spec in SPECS.items():
        assert name.startswith("enforcer_") and spec.name == name
        assert (spec.kind == "counter") == name.endswith("_total"), name
        if spec.kind == "histogram":
            assert name.endswith("_seconds")
        assert set(spec.labels) <= bounded, name
        assert spec.help.endswith(".")


def test_exposition_parses() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    m[BLOCKED_TOTAL].labels("dns", "wechat", "messaging", "dns-block").inc()
    m[DNS_QUERIES_TOTAL].labels("blocked").inc(3)
    m[DNS_QUERY_DURATION].observe(0.0004)
    from tests.policy.policy_helpers import shipped

    m.set_policy(shipped())
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    for name, spec in SPECS.items():
        base = name[: -len("_total")] if spec.kind == "counter" else name
        assert base in families, name
        assert families[base].type == spec.kind
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    key = ("enforcer_blocked_total", (("action", "dns-block"), ("app", "wechat"), ("category", "messaging"),
                                      ("component", "dns")))  # fmt: skip
    assert samples[key] == 1
    assert samples[("enforcer_dns_queries_total", (("outcome", "blocked"),))] == 3
    assert samples[("enforcer_dns_query_duration_seconds_bucket", (("le", "0.0005"),))] == 1
    assert samples[("enforcer_dns_query_duration_seconds_bucket", (("le", "0.00025"),))] == 0
    assert samples[("enforcer_policy_info", (("fingerprint", shipped().fingerprint),))] == 1
    rules = {dict(k[1])["kind"]: v for k, v in samples.items() if k[0] == "enforcer_policy_rules" and
             dict(k[1])["app"] == "wechat"}  # fmt: skip
    assert rules["domain"] >= 1 and rules["cidr"] >= 1


def test_subset_registry_and_local_counter() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry, names=[DNS_QUERY_DURATION])
    assert DNS_QUERY_DURATION in m and BLOCKED_TOTAL not in m
    counter = LocalCounter(BLOCKED_TOTAL, registry)
    counter.inc(("dns", "wechat", "messaging", "dns-block"))
    counter.inc(("dns", "wechat", "messaging", "dns-block"), 2)
    counter.inc(("proxy", "kaspersky", "update", "http-block"))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    fam = families["enforcer_blocked"]
    assert fam.type == "counter"
    values = {(s.labels["component"], s.labels["app"]): s.value for s in fam.samples if s.name.endswith("_total")}
    assert values == {("dns", "wechat"): 3, ("proxy", "kaspersky"): 1}
    with pytest.raises(ValueError, match="Duplicated timeseries"):  # the name is taken: one definition per registry
        Metrics(registry, names=[BLOCKED_TOTAL])


def test_serve_metrics_over_http() -> None:
    registry = CollectorRegistry()
    Metrics(registry)[DNS_QUERIES_TOTAL].labels("forwarded").inc()
    port = free_port()
    server, thread = serve_metrics(f"127.0.0.1:{port}", registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["enforcer_dns_queries"].samples[0].value == 1
