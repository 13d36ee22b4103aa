"""The shared decision table (tests/data/match_cases.yaml) through the matcher, and a sample via ``enforcer lookup``.

The resolver and the proxy addon run the same table; here it pins the policy's own verdicts.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from enforcer.policy import Match
from tests.conftest import BLOCKLISTS, DATA
from tests.policy.policy_helpers import enforcer, shipped

CASES: list[dict[str, Any]] = yaml.safe_load((DATA / "match_cases.yaml").read_text(encoding="utf-8"))


def _decide(case: dict[str, Any]) -> Match | None:
    policy = shipped()
    if case["kind"] == "domain":
        return policy.match_name(case["query"])
    if case["kind"] == "url":
        return policy.match_url(case["query"], case.get("method", "GET"))
    return policy.match_ip(case["query"])


def _check(case: dict[str, Any], got: dict[str, Any]) -> None:
    assert got["verdict"] == case["verdict"], case.get("note")
    if case["verdict"] != "none":
        for key in ("app", "category", "rule"):
            if key in case:
                assert got[key] == case[key], f"{key}: {case.get('note')}"


def test_table_is_well_formed() -> None:
    assert len(CASES) > 100
    kinds = {c["kind"] for c in CASES}
    assert kinds == {"domain", "url", "ip"}
    for c in CASES:
        assert c["verdict"] in ("block", "allow", "none"), c
        assert set(c) <= {"query", "kind", "method", "verdict", "app", "category", "rule", "note"}, c
    # Every verdict occurs, so the table can catch a matcher that always says the same thing.
    assert {c["verdict"] for c in CASES} == {"block", "allow", "none"}


@pytest.mark.parametrize("case", CASES, ids=[f"{c['kind']}:{c['query']}"[:90] for c in CASES])
def test_matcher(case: dict[str, Any]) -> None:
    m = _decide(case)
    got = (
        {"verdict": "none"}
        if m is None
        else {
            "verdict": m.verdict,
            "app": m.rule.app,
            "category": m.rule.category,
            "rule": m.rule.id,
        }
    )
    _check(case, got)


def test_lookup_cli_agrees_on_a_sample() -> None:
    """``enforcer lookup`` (a real process) gives the table's verdicts; one process for a sample of each kind."""
    sample: list[dict[str, Any]] = []
    for kind in ("domain", "url", "ip"):
        for verdict in ("block", "allow", "none"):
            sample.extend(
                [c for c in CASES if c["kind"] == kind and c["verdict"] == verdict and c.get("method", "GET") == "GET"][
                    :6
                ]
            )
    assert len(sample) >= 30
    proc = enforcer("lookup", "--blocklist", str(BLOCKLISTS), "--at", "2024-01-01", *[c["query"] for c in sample])
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(lines) == len(sample)
    for case, got in zip(sample, lines, strict=True):
        assert got["query"] == case["query"]
        assert got["kind"] == case["kind"]
        assert set(got) == {"query", "kind", "verdict", "app", "category", "rule", "source", "enforced"}
        _check(case, got)
        if got["verdict"] == "block":
            assert got["enforced"] is True
            assert got["source"].startswith(str(BLOCKLISTS)) and got["source"].rsplit(":", 1)[1].isdigit()
        else:
            assert got["enforced"] is False
