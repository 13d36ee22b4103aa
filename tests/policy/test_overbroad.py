"""`enforcer check` catches over-broad rules: a name rule on a public suffix (Public Suffix List, ICANN and private
sections, unknown TLDs), a CIDR shorter than /8 (IPv4) or /16 (IPv6), a url rule that matches every URL or every URL
under a public suffix, a feed line that is a public suffix, an exempt_clients range that exempts nearly everyone. Each
is a ``PATH:LINE:COL: warning:`` line, an error under ``--strict``, logged (not refused) by a running reloader; the
shipped blocklists stay clean."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from enforcer.policy import load_policy
from enforcer.policy.reloader import PolicyHolder
from tests.policy.policy_helpers import app_yaml, enforcer, shipped, write

# (rule lines under block:, the expected warning text after "PATH:6:COL: warning: ")
BROAD = [
    ("domain: com", "13", "over-broad rule: domain com is a public suffix: it blocks every name under it"),
    ("domain: co.uk", "13", "over-broad rule: domain co.uk is a public suffix: it blocks every name under it"),
    ("domain: github.io", "13", "over-broad rule: domain github.io is a public suffix: it blocks every name under it"),
    ("domain: lan", "13", "over-broad rule: domain lan is a public suffix: it blocks every name under it"),
    ("domain: 中国", "13", "over-broad rule: domain xn--fiqs8s is a public suffix: it blocks every name under it"),
    ("domain: x.ck", "13", "over-broad rule: domain x.ck is a public suffix: it blocks every name under it"),
    ("host: com", "11", "over-broad rule: host com is a public suffix (did you mean a name below it?)"),
    ("cidr: 0.0.0.0/0", "11", "over-broad rule: cidr 0.0.0.0/0 covers every IPv4 address (a prefix shorter than /8)"),
    ('cidr: "::/0"', "11", "over-broad rule: cidr ::/0 covers every IPv6 address (a prefix shorter than /16)"),
    (
        "cidr: 10.0.0.0/7",
        "11",
        "over-broad rule: cidr 10.0.0.0/7 covers 33,554,432 addresses (a prefix shorter than /8)",
    ),
    (
        'cidr: "2000::/3"',
        "11",
        f"over-broad rule: cidr 2000::/3 covers {2**125:,} addresses (a prefix shorter than /16)",
    ),
    ('url: "*/*"', "10", "over-broad rule: url */* matches every URL"),
    ('url: "https://*/**"', "10", "over-broad rule: url https://*/** matches every URL"),
    ('url: "*.com/*"', "10", "over-broad rule: url *.com/* matches every URL under the public suffix com"),
    ('url: "*.co.uk/*"', "10", "over-broad rule: url *.co.uk/* matches every URL under the public suffix co.uk"),
    ('url: "*/*"\n    method: POST\n    id: t:post', "10", "over-broad rule: url */* matches every URL (method POST)"),
]

NARROW = [
    "domain: qq.com",
    "domain: weixin.qq.com",
    "domain: example.co.uk",
    "domain: www.ck",
    "host: mmbiz.qpic.cn",
    "cidr: 77.74.176.0/21",
    "cidr: 10.0.0.0/8",
    'cidr: "2001::/16"',
    'url: "*/mmtls/*"',
    'url: "*.qq.com/*"',
    'url: "*/*.apk"',
    'url: "*/*?id=com.tencent.mm"',
    'url: "com/*"',
]


def _one_rule(tmp_path: Path, rule: str, section: str = "block") -> Path:
    extra = "\n    category: web" if section == "block" else ""
    body = f"{section}:\n  - {rule}{extra}\n"
    if section == "allow":
        body = "block:\n  - domain: a.example\n    category: web\n" + body
    return write(tmp_path / "lists", "t.yaml", app_yaml("t", body))


def _overbroad(warnings: tuple[object, ...]) -> list[str]:
    return [str(w) for w in warnings if "over-broad" in str(w)]


@pytest.mark.parametrize(("rule", "col", "message"), BROAD, ids=[b[0].split("\n")[0] for b in BROAD])
def test_overbroad_rule_is_a_located_warning(tmp_path: Path, rule: str, col: str, message: str) -> None:
    path = _one_rule(tmp_path, rule)
    assert _overbroad(load_policy(path.parent).warnings) == [f"{path}:6:{col}: warning: {message}"]


def test_check_prints_every_overbroad_warning_and_strict_fails(tmp_path: Path) -> None:
    # All of them in one file: two real `enforcer check` runs instead of two per rule.
    body = "block:\n" + "".join(f"  - {rule}\n    category: web\n" for rule, _col, _msg in BROAD)
    path = write(tmp_path / "lists", "t.yaml", app_yaml("t", body))
    lines, expected = 5, []
    for rule, col, message in BROAD:
        lines += 1
        expected.append(f"{path}:{lines}:{col}: warning: {message}")
        lines += 1 + rule.count("\n")
    proc = enforcer("check", str(path.parent))
    assert proc.returncode == 0
    assert [x for x in proc.stderr.splitlines() if "over-broad" in x] == expected
    strict = enforcer("check", "--strict", str(path.parent))
    assert strict.returncode == 1 and proc.stdout.startswith("OK:") and strict.stdout == ""
    assert [x for x in strict.stderr.splitlines() if "over-broad" in x] == [
        x.replace(": warning: ", ": ", 1) for x in expected
    ]


@pytest.mark.parametrize("rule", NARROW)
def test_ordinary_rules_are_not_overbroad(tmp_path: Path, rule: str) -> None:
    path = _one_rule(tmp_path, rule)
    assert _overbroad(load_policy(path.parent).warnings) == []


def test_overbroad_allow_rule_says_it_exempts(tmp_path: Path) -> None:
    path = _one_rule(tmp_path, "domain: com", "allow")
    assert _overbroad(load_policy(path.parent).warnings) == [
        f"{path}:9:13: warning: over-broad rule: domain com is a public suffix: it exempts every name under it"
    ]


def test_overbroad_feed_lines_are_located_in_the_feed(tmp_path: Path) -> None:
    folder = tmp_path / "lists"
    write(folder, "t.yaml", app_yaml("t", "block:\n  - include: feed.txt\n    category: web\n"))
    feed = write(folder, "feed.txt", "a.example\ncom\n0.0.0.0 b.example co.uk\n# github.io\nblogspot.com\n")
    assert _overbroad(load_policy(folder).warnings) == [
        f"{feed}:2:1: warning: over-broad feed entry: com is a public suffix: this include blocks every name under it",
        f"{feed}:3:19: warning: over-broad feed entry: co.uk is a public suffix: this include blocks every name "
        "under it",
        f"{feed}:5:1: warning: over-broad feed entry: blogspot.com is a public suffix: this include blocks every "
        "name under it",
    ]


@pytest.mark.parametrize(
    ("value", "scope"),
    [
        ("0.0.0.0/0", "every IPv4 address (a prefix shorter than /8)"),
        ('"::/0"', "every IPv6 address (a prefix shorter than /16)"),
        ("0.0.0.0/1", "2,147,483,648 addresses (a prefix shorter than /8)"),
    ],
)
def test_overbroad_exempt_clients(tmp_path: Path, value: str, scope: str) -> None:
    folder = tmp_path / "lists"
    text = app_yaml("t", "block:\n  - domain: a.example\n    category: web\n")
    text = text.replace("  timezone:", f"  exempt_clients: [{value}]\n  timezone:")
    path = write(folder, "t.yaml", text)
    shown = value.strip('"')
    assert _overbroad(load_policy(folder).warnings) == [
        f"{path}:4:20: warning: over-broad exempt_clients: {shown} covers {scope}: the policy is not enforced for them"
    ]


def test_shipped_blocklists_have_no_overbroad_rule() -> None:
    assert _overbroad(shipped().warnings) == []


def test_reloader_logs_overbroad_warnings_and_applies_the_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _one_rule(tmp_path, "domain: a.example")
    holder = PolicyHolder(path.parent)
    path.write_text(path.read_text().replace("a.example", "co.uk"))
    with caplog.at_level(logging.WARNING, logger="enforcer.policy"):
        assert holder.reload() is True
    assert holder.policy.match_name("x.co.uk") is not None
    assert f"{path}:6:13: warning: over-broad rule: domain co.uk is a public suffix" in caplog.text


def test_feed_check_stays_cheap(tmp_path: Path) -> None:
    from enforcer.policy.lint import public_feed_names

    names = [f"host{i}.example{i % 1000}.com" for i in range(200_000)] + ["com", "co.uk"]
    public_feed_names(["warm.example"])  # the list is loaded once per process
    started = time.perf_counter()
    assert public_feed_names(names) == ["com", "co.uk"]
    assert time.perf_counter() - started < 2.0  # measured ~0.05 s; generous for a loaded 2-core machine
