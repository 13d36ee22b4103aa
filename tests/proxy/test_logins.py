"""``enforcer proxy --auth htpasswd:FILE`` and ``--blocked-connect``: the checks before mitmdump starts, the argv.

The htpasswd rule (enforcer/proxy/logins.py) is the one both mitmproxy 11 and 12 can honour: bcrypt (when the
``bcrypt`` package is importable) and ``{SHA}`` lines. The logins themselves, through a real mitmdump, are in
test_e2e_blockpage.py.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
from pathlib import Path

import pytest
import yaml

from enforcer.config import ConfigError, section_defaults
from enforcer.proxy.cli import add_arguments, mitmdump_command
from enforcer.proxy.logins import auth_problems, check_htpasswd, htpasswd_path
from tests.conftest import run_cli

HAVE_BCRYPT = importlib.util.find_spec("bcrypt") is not None
# htpasswd -nbB alice secret (a fixed bcrypt hash: its check needs no bcrypt here, only its shape)
BCRYPT_LINE = "alice:$2y$05$gJmcsdq0.QlVNnl5sXt7muL5hmU3Kd3mD9oI8nHp0iHs2ZKPvcHJ2"


def sha_line(user: str, password: str) -> str:
    """What ``htpasswd -nbs USER PASSWORD`` writes."""
    return f"{user}:{{SHA}}{base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_arguments("proxy", p)
    return p


def sets(cmd: list[str]) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]


def test_sha_lines_comments_and_blank_lines_are_accepted(tmp_path: Path) -> None:
    f = tmp_path / "users"
    f.write_text(f"# proxy users\n\n{sha_line('alice', 'secret')}\n{sha_line('bob', 'x')}\n", encoding="utf-8")
    assert check_htpasswd(f) == []


def test_bcrypt_lines_need_the_bcrypt_package(tmp_path: Path) -> None:
    f = tmp_path / "users"
    f.write_text(BCRYPT_LINE + "\n", encoding="utf-8")
    problems = check_htpasswd(f)
    if HAVE_BCRYPT:
        assert problems == []
    else:  # mitmproxy 11 (passlib) would refuse every login of this file without saying why
        assert len(problems) == 1 and problems[0].startswith(f"{f}:1: bcrypt hash for 'alice'")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alice:$apr1$abc$defghijklmnopqrstuvwx0\n", ":1: unsupported hash for 'alice'"),  # htpasswd -m (MD5)
        ("# c\nalice:plaintext\n", ":2: unsupported hash for 'alice'"),
        ("no-colon-here\n", ":1: expected user:hash"),
        (":{SHA}abc\n", ":1: expected user:hash"),
        ("# only a comment\n", ": no user"),
        ("", ": no user"),
    ],
)
def test_bad_htpasswd_lines_are_located(tmp_path: Path, text: str, expected: str) -> None:
    f = tmp_path / "users"
    f.write_text(text, encoding="utf-8")
    problems = check_htpasswd(f)
    assert len(problems) == 1 and problems[0].startswith(f"{f}{expected}"), problems


def test_unreadable_htpasswd(tmp_path: Path) -> None:
    assert check_htpasswd(tmp_path) == [f"{tmp_path}: not a regular file"]
    assert check_htpasswd(tmp_path / "missing") == [f"{tmp_path / 'missing'}: not a regular file"]
    latin = tmp_path / "latin"
    latin.write_bytes(b"caf\xe9:{SHA}x\n")
    assert check_htpasswd(latin)[0].startswith(f"{latin}: not UTF-8 text")


def test_auth_value_form() -> None:
    assert auth_problems(None) == [] and auth_problems("") == []
    assert auth_problems("basic:alice:secret") == ["--auth: expected htpasswd:FILE, got 'basic:alice:secret'"]
    assert auth_problems("htpasswd:") == ["--auth: expected htpasswd:FILE, got 'htpasswd:'"]
    assert htpasswd_path("htpasswd:rel/users") == Path("rel/users").resolve()


def test_mitmdump_command_sets_proxyauth_and_the_connect_mode(tmp_path: Path) -> None:
    f = tmp_path / "users"
    f.write_text(sha_line("alice", "secret") + "\n", encoding="utf-8")
    default = sets(mitmdump_command(parser().parse_args([])))
    assert "enforcer_blocked_connect=page" in default and not [s for s in default if s.startswith("proxyauth")]
    cmd = sets(mitmdump_command(parser().parse_args(["--auth", f"htpasswd:{f}", "--blocked-connect", "refuse"])))
    assert f"proxyauth=@{f.resolve()}" in cmd and "enforcer_blocked_connect=refuse" in cmd


def test_blocked_connect_from_the_config_file(tmp_path: Path) -> None:
    config = yaml.safe_load("proxy:\n  blocked-connect: refuse\n  auth: htpasswd:/etc/enforcer/users\n")
    defaults = section_defaults(parser(), config, None, "proxy", "enforcer.yaml")
    assert defaults == {"blocked_connect": "refuse", "auth": "htpasswd:/etc/enforcer/users"}
    with pytest.raises(ConfigError, match=r"enforcer\.yaml:1:1: .*blocked-connect"):
        section_defaults(parser(), yaml.safe_load("proxy:\n  blocked-connect: drop\n"), None, "proxy", "enforcer.yaml")


def test_bad_auth_exits_1_before_mitmdump_starts(tmp_path: Path) -> None:
    f = tmp_path / "users"
    f.write_text("alice:$apr1$abc$defghijklmnopqrstuvwx0\n", encoding="utf-8")
    out = run_cli("proxy", "--listen", "127.0.0.1:1", "--auth", f"htpasswd:{f}")
    assert (
        out.returncode == 1
        and out.stderr.strip()
        == f"{f}:1: unsupported hash for 'alice': use bcrypt (htpasswd -B) or {{SHA}} (htpasswd -s)"
    )
    out = run_cli("proxy", "--listen", "127.0.0.1:1", "--auth", "alice:secret")
    assert out.returncode == 1 and out.stderr.strip() == "--auth: expected htpasswd:FILE, got 'alice:secret'"
    out = run_cli("proxy", "--blocked-connect", "drop")
    assert out.returncode == 2 and "invalid choice: 'drop'" in out.stderr
