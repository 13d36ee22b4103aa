"""Every kind of bad input gives one ``PATH:LINE:COL: message`` line at the offending node, in the loader and through
``enforcer check`` as a real process (exit 1, one line per problem, no traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from enforcer.policy import PolicyError, load_policy
from tests.policy.policy_helpers import enforcer, write

H = "app: t\npolicy:\n  effective: 2023-10-30\n"
LONG_LABEL = "a" * 64
LONG_NAME = ".".join(["a" * 60] * 5)  # 304 characters

# (case id, {file: text}, [expected problem lines, relative to the folder]) — LINE:COL verified by hand against
# the YAML text: a value error points at the value, a missing key at the mapping that lacks it.
CASES: list[tuple[str, dict[str, str], list[str]]] = [
    (
        "yaml-unterminated-quote",
        {"t.yaml": H + 'block:\n  - domain: "unterminated\n'},
        ["t.yaml:5:13: YAML syntax error: unterminated quoted string"],
    ),
    (
        # Lines after the open quote used to move the location to where the file ended (63:14 for a quote on 61).
        "yaml-unterminated-quote-mid-file",
        {"t.yaml": H + 'block:\n  - domain: "a.example\n    category: web\n  - domain: b.example\n    category: web\n'},
        ["t.yaml:5:13: YAML syntax error: unterminated quoted string"],
    ),
    (
        "yaml-mapping-values",
        {"t.yaml": H + "block:\n  - domain: a.example: b\n    category: web\n"},
        ["t.yaml:5:22: YAML syntax error: mapping values are not allowed here"],
    ),
    (
        "yaml-unclosed-flow-sequence",
        {"t.yaml": H + "exempt_clients: [10.0.0.1, 10.0.0.2\nblock:\n  - domain: a.example\n    category: web\n"},
        ["t.yaml:4:17: YAML syntax error: unclosed '[' (expected ',' or ']')"],
    ),
    (
        "yaml-tab-indent",
        {"t.yaml": H + "block:\n\t- domain: a.example\n"},
        ["t.yaml:5:1: YAML syntax error: character that cannot start any YAML token (a tab? indent with spaces)"],
    ),
    (
        "yaml-bad-indent",
        {"t.yaml": H + "block:\n  - domain: a.example\n   category: web\n"},
        ["t.yaml:6:4: YAML syntax error: bad indentation"],
    ),
    (
        "unknown-keys",
        {"t.yaml": H + "colour: red\nblock:\n  - domain: a.example\n    categroy: web\n"},
        [
            "t.yaml:4:1: unknown key 'colour' in the top level (expected one of: allow, app, block, kind, name, "
            "policy, vendor)",
            "t.yaml:7:5: unknown key 'categroy' in a 'block' rule (expected one of: category, cidr, comment, "
            "dns_action, domain, host, id, include, method, source, store, url)",
            "t.yaml:6:5: block rule needs a 'category' (messaging|update|download|store|telemetry|payments|bypass|web)",
        ],
    ),
    (
        "missing-app",
        {"t.yaml": "name: x\npolicy:\n  effective: 2023-10-30\n"},
        ["t.yaml:1:1: missing required key 'app'"],
    ),
    (
        "missing-effective",
        {"t.yaml": "app: t\npolicy:\n  timezone: UTC\n"},
        ["t.yaml:3:3: missing required key 'policy.effective' (a date such as 2023-10-30)"],
    ),
    (
        "missing-category",
        {"t.yaml": H + "block:\n  - domain: a.example\n"},
        ["t.yaml:5:5: block rule needs a 'category' (messaging|update|download|store|telemetry|payments|bypass|web)"],
    ),
    (
        "invalid-domains",
        {
            "t.yaml": H
            + "block:\n"
            + "  - domain: a..example\n    category: web\n"
            + f"  - domain: {LONG_LABEL}.example\n    category: web\n"
            + f"  - host: {LONG_NAME}\n    category: web\n"
            + '  - domain: "exa$mple.com"\n    category: web\n'
        },
        [
            "t.yaml:5:13: invalid domain 'a..example': empty label in 'a..example'",
            f"t.yaml:7:13: invalid domain '{LONG_LABEL}.example': label longer than 63 characters: {'a' * 20}...",
            f"t.yaml:9:11: invalid host '{LONG_NAME}': domain name longer than 253 characters (304)",
            "t.yaml:11:13: invalid domain 'exa$mple.com': bad character in label 'exa$mple' (letters, digits, '-' "
            "and '_' only)",
        ],
    ),
    (
        "invalid-idn",
        {
            "t.yaml": H + 'block:\n  - domain: "ex\\u2028mple.com"\n    category: web\n  - domain: xn--a.com\n'
            "    category: web\n"
        },
        [
            "t.yaml:5:13: invalid domain 'ex\\u2028mple.com': invalid internationalised label 'ex\\u2028mple': "
            "Invalid character '\\u2028'",
            "t.yaml:7:13: invalid domain 'xn--a.com': invalid punycode label 'xn--a': it does not encode a valid "
            "Unicode label",
        ],
    ),
    (
        "cidrs",
        {
            "t.yaml": "app: t\npolicy:\n  effective: 2023-10-30\n  exempt_clients: [10.0.0.0/33]\nblock:\n"
            "  - cidr: 10.0.0.1/24\n    category: web\n"
        },
        [
            "t.yaml:4:20: invalid CIDR '10.0.0.0/33': '10.0.0.0/33' does not appear to be an IPv4 or IPv6 network",
            "t.yaml:6:11: invalid CIDR '10.0.0.1/24': 10.0.0.1/24 has host bits set",
        ],
    ),
    (
        "date",
        {"t.yaml": "app: t\npolicy:\n  effective: 2023-13-45\n"},
        ["t.yaml:3:14: 'effective' must be a date (2023-10-30) or an RFC 3339 timestamp, got '2023-13-45'"],
    ),
    (
        "timezone",
        {"t.yaml": "app: t\npolicy:\n  effective: 2023-10-30\n  timezone: Mars/Olympus\n"},
        ["t.yaml:4:13: unknown time zone 'Mars/Olympus' (use an IANA name such as America/Toronto)"],
    ),
    (
        "glob-and-category",
        {
            "t.yaml": H + 'block:\n  - url: "dl.example.com/a[b*"\n    category: web\n  - domain: a.example\n'
            "    category: games\n"
        },
        [
            "t.yaml:5:10: invalid url rule: unterminated character class '[' in glob '/a[b*'",
            "t.yaml:8:15: unknown category 'games' (expected one of: messaging, update, download, store, telemetry, "
            "payments, bypass, web)",
        ],
    ),
    (
        "duplicate-app",
        {
            "a.yaml": H + "block:\n  - domain: a.example\n    category: web\n",
            "b.yaml": "# second\n" + H + "block:\n  - domain: b.example\n    category: web\n",
        },
        ["b.yaml:2:6: duplicate app id 't' (first defined at {D}/a.yaml:1)"],
    ),
    ("empty-file", {"t.yaml": ""}, ["t.yaml:1:1: empty blocklist file"]),
    ("comments-only", {"t.yaml": "# nothing yet\n"}, ["t.yaml:1:1: empty blocklist file"]),
    (
        "include-feed-lines",
        {
            "t.yaml": H + "block:\n  - include: feeds/extra.txt\n    category: web\n",
            "feeds/extra.txt": "# comment\nok.example\n0.0.0.0 hosts.example other.example\n  bad..name\n"
            "not a domain line\n127.0.0.1 localhost\n",
        },
        [
            "feeds/extra.txt:4:3: invalid domain: empty label in 'bad..name'",
            "feeds/extra.txt:5:1: expected one domain per line, or 'IP name ...'",
        ],
    ),
    (
        "include-feed-bad-a-label",
        {
            "t.yaml": H + "block:\n  - include: f.txt\n    category: web\n",
            "f.txt": "xn--wchat-bsa.com\nxn--a.com\n",
        },
        ["f.txt:2:1: invalid domain: invalid punycode label 'xn--a': it does not encode a valid Unicode label"],
    ),
    (
        "include-missing",
        {"t.yaml": H + "block:\n  - include: nope.txt\n    category: web\n"},
        ["t.yaml:5:14: cannot read include file 'nope.txt': No such file or directory"],
    ),
    (
        "two-kinds",
        {"t.yaml": H + "block:\n  - domain: a.example\n    host: b.example\n    category: web\n"},
        ["t.yaml:5:5: a rule needs exactly one of domain, host, url, cidr, store, include (found: domain, host)"],
    ),
]


def _expected(folder: Path, lines: list[str]) -> list[str]:
    return [f"{folder}/{x}".replace("{D}", str(folder)) for x in lines]


def _make(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "lists"
    for name, text in files.items():
        write(folder, name, text)
    return folder


@pytest.mark.parametrize(("files", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_loader_reports_path_line_col(tmp_path: Path, files: dict[str, str], expected: list[str]) -> None:
    folder = _make(tmp_path, files)
    with pytest.raises(PolicyError) as info:
        load_policy(folder)
    errors = [str(p) for p in info.value.problems if p.severity == "error"]
    assert errors == _expected(folder, expected)


# The loader test above reads every case in process; through the real process (~1 s each) the default run samples
# one case per kind of problem (YAML syntax, the model, a feed, several problems at once) and -m slow runs them all.
CLI_SAMPLE = {"yaml-unterminated-quote", "missing-category", "include-feed-lines", "two-kinds"}


@pytest.mark.parametrize(
    ("files", "expected"),
    [pytest.param(*c[1:], id=c[0], marks=() if c[0] in CLI_SAMPLE else pytest.mark.slow) for c in CASES],
)
def test_check_cli_one_line_per_problem(tmp_path: Path, files: dict[str, str], expected: list[str]) -> None:
    folder = _make(tmp_path, files)
    proc = enforcer("check", str(folder))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    errors = [x for x in proc.stderr.splitlines() if ": warning: " not in x]
    assert errors == _expected(folder, expected)


def test_feed_errors_are_capped(tmp_path: Path) -> None:
    folder = _make(
        tmp_path,
        {
            "t.yaml": H + "block:\n  - include: f.txt\n    category: web\n",
            "f.txt": "".join(f"bad..{i}\n" for i in range(50)),
        },
    )
    with pytest.raises(PolicyError) as info:
        load_policy(folder)
    lines = [str(p) for p in info.value.problems]
    assert len(lines) == 21
    assert lines[0] == f"{folder}/f.txt:1:1: invalid domain: empty label in 'bad..0'"
    assert lines[-1] == f"{folder}/f.txt:1:1: 30 more invalid lines not shown"


WARN = H + (
    "block:\n"
    "  - domain: a.example\n    category: web\n"
    "  - domain: a.example\n    category: web\n"
    "  - host: x.a.example\n    category: web\n"
    "allow:\n  - domain: unrelated.example\n"
)


def test_warnings_and_strict(tmp_path: Path) -> None:
    folder = _make(tmp_path, {"t.yaml": WARN})
    expected = [
        f"{folder}/t.yaml:7:13: warning: duplicate rule: domain a.example is already listed at {folder}/t.yaml:5",
        f"{folder}/t.yaml:9:11: warning: shadowed rule: host x.a.example is already covered by t:domain:a.example "
        f"at {folder}/t.yaml:5",
        f"{folder}/t.yaml:12:13: warning: allow rule for unrelated.example has no effect: no block rule covers it",
    ]
    policy = load_policy(folder)
    assert [str(w) for w in policy.warnings] == expected
    proc = enforcer("check", str(folder))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == expected
    assert "3 warning(s)" in proc.stdout and f"fingerprint: {policy.fingerprint}" in proc.stdout
    strict = enforcer("check", "--strict", str(folder))
    assert strict.returncode == 1
    assert strict.stderr.splitlines() == [x.replace(": warning: ", ": ", 1) for x in expected]
    assert "Traceback" not in strict.stderr


def test_conflicting_explicit_ids_are_errors(tmp_path: Path) -> None:
    folder = _make(
        tmp_path,
        {
            "t.yaml": H + "block:\n  - domain: a.example\n    id: same\n    category: web\n"
            "  - domain: b.example\n    id: same\n    category: web\n"
        },
    )
    with pytest.raises(PolicyError) as info:
        load_policy(folder)
    assert [str(p) for p in info.value.problems] == [
        f"{folder}/t.yaml:8:13: duplicate rule id 'same' (first at {folder}/t.yaml:5)"
    ]


def test_check_shipped_lists_pass() -> None:
    proc = enforcer("check", "--strict")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK: 3 file(s), 3 app(s): controls, kaspersky, wechat")
    assert "fingerprint: " in proc.stdout


def test_missing_path(tmp_path: Path) -> None:
    proc = enforcer("check", str(tmp_path / "nope"))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"{tmp_path}/nope:1:1: no such file or folder"]
