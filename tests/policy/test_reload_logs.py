"""What a policy load says (issue 14 item 5), and ``require_apps``: in-process, with real files and the real metrics.

The same behaviour through real ``enforcer dns`` / ``enforcer proxy`` processes is in tests/e2e/test_decision_logs.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from enforcer.blocklog import BlockLog
from enforcer.metrics import Metrics
from enforcer.policy.reloader import PolicyHolder, RequiredAppError, parse_required_apps
from tests.policy.policy_helpers import app_yaml, write

ONE = app_yaml("one", "block:\n  - domain: one.example\n    category: web\n")
TWO = app_yaml("two", "block:\n  - domain: two.example\n    category: web\n")


def _reloads(registry: CollectorRegistry, result: str) -> float:
    return registry.get_sample_value("enforcer_policy_reloads_total", {"result": result}) or 0.0


def test_parse_required_apps() -> None:
    assert parse_required_apps(None) is None
    assert parse_required_apps("") == []
    assert parse_required_apps(" wechat, kaspersky,,") == ["kaspersky", "wechat"]
    assert parse_required_apps(["wechat", "kaspersky,wechat"]) == ["kaspersky", "wechat"]


def test_loads_are_described_and_a_vanished_app_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "one.yaml", ONE)
    two = write(tmp_path, "two.yaml", TWO)
    registry = CollectorRegistry()
    caplog.set_level(logging.INFO, "enforcer.policy")
    holder = PolicyHolder(tmp_path, metrics=Metrics(registry), require_apps=None)
    loaded = [r for r in caplog.records if r.getMessage().startswith("policy loaded:")]
    assert len(loaded) == 1 and loaded[0].levelno == logging.INFO
    assert "2 apps (one, two), 2 rules from " in loaded[0].getMessage() and "two.yaml" in loaded[0].getMessage()
    assert holder.require_apps == ["one", "two"]  # None: the apps of the first load

    caplog.clear()
    two.unlink()
    assert holder.reload() is False
    refused = [r for r in caplog.records if "policy reload refused" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.ERROR
    text = refused[0].getMessage()
    assert f"required app 'two' (was in {two}) missing from the policy (--require-app)" in text
    assert "keeping the last good policy" in text and "(2 apps, 2 rules)" in text
    assert "two" in holder.policy.apps and _reloads(registry, "failure") == 1

    caplog.clear()
    write(tmp_path, "two.yaml", TWO)
    assert holder.reload() is True
    assert any("policy reloaded: 2 apps" in r.getMessage() and "(unchanged)" in r.getMessage() for r in caplog.records)


def test_without_the_check_a_removal_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "one.yaml", ONE)
    two = write(tmp_path, "two.yaml", TWO)
    holder = PolicyHolder(tmp_path, require_apps=[])
    caplog.set_level(logging.INFO, "enforcer.policy")
    two.unlink()
    assert holder.reload() is True
    removed = [r for r in caplog.records if "app 'two' removed" in r.getMessage()]
    assert len(removed) == 1 and removed[0].levelno == logging.WARNING and str(two) in removed[0].getMessage()
    assert "two" not in holder.policy.apps
    caplog.clear()
    write(tmp_path, "two.yaml", TWO)
    assert holder.reload() is True
    assert any(r.levelno == logging.WARNING and "app 'two' added" in r.getMessage() for r in caplog.records)


def test_an_explicit_required_app_missing_at_start_is_one_line(tmp_path: Path) -> None:
    write(tmp_path, "one.yaml", ONE)
    with pytest.raises(RequiredAppError) as info:
        PolicyHolder(tmp_path, require_apps=["one", "wechat"])
    lines = [str(p) for p in info.value.problems]
    assert lines == [f"{tmp_path}: required app 'wechat' missing from the policy (--require-app)"]


def test_block_log_is_rate_limited_per_app(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    blocks = BlockLog(interval=10, clock=lambda: now[0])
    caplog.set_level(logging.INFO, "enforcer.blocks")
    assert blocks.blocked("dns", "wechat", "wechat:domain:qq.com", "w.yaml:3", "weixin.qq.com", "10.0.0.7")
    for _ in range(41):
        assert not blocks.blocked("dns", "wechat", "wechat:domain:qq.com", "w.yaml:3", "weixin.qq.com", "10.0.0.7")
    assert blocks.blocked("dns", "kaspersky", "k:domain:kaspersky.com", "k.yaml:3", "kaspersky.com", "10.0.0.8")
    now[0] += 10
    assert blocks.blocked("dns", "wechat", "wechat:domain:qq.com", "w.yaml:3", "dl.wechat.com", None)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "blocked: dns weixin.qq.com for 10.0.0.7 (app wechat, rule wechat:domain:qq.com, w.yaml:3)",
        "blocked: dns kaspersky.com for 10.0.0.8 (app kaspersky, rule k:domain:kaspersky.com, k.yaml:3)",
        "blocked: dns dl.wechat.com for ? (app wechat, rule wechat:domain:qq.com, w.yaml:3)"
        " (41 similar line(s) held back in the last 10 s)",
    ]
