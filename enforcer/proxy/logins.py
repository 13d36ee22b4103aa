"""Proxy logins (``enforcer proxy --auth htpasswd:FILE``): the value checked before mitmdump starts.

mitmproxy's own ``proxyauth`` addon does the logins (``proxyauth=@FILE``: 407 without valid credentials, the user
in ``flow.metadata["proxyauth"]``, which ``Runtime.note_user`` turns into ``user.name`` on hit events). What it
accepts differs by version: mitmproxy 12 reads bcrypt (``$2y$``/``$2b$``/``$2a$``) and ``{SHA}`` lines only and
refuses the whole file otherwise; mitmproxy 11 (passlib) reads more, but checks a bcrypt line only when the
``bcrypt`` package is installed, and otherwise silently answers 407 to every login. So one rule here, for both:

- ``htpasswd_path(value)``: ``htpasswd:FILE`` -> the file's absolute path; ``LoginError`` for another form.
- ``auth_problems(value)``: the problems of an ``--auth`` value (None: no login), for ``enforcer proxy`` to print.
- ``check_htpasswd(path)``: ``PATH:LINE: message`` for every line mitmproxy would refuse or could never match (no
  ``user:hash``, another hash scheme, bcrypt without the ``bcrypt`` package), and for a file without any user.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PREFIX = "htpasswd:"
MAX_BYTES = 4 * 1024 * 1024  # an htpasswd file of a few thousand users is a few hundred KB
BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")
SHA_PREFIX = "{SHA}"


class LoginError(ValueError):
    """An ``--auth`` value or htpasswd file mitmproxy would refuse (one ``PATH:LINE: message`` line each)."""


def htpasswd_path(value: str) -> Path:
    if not value.startswith(PREFIX) or not value[len(PREFIX) :]:
        raise LoginError(f"--auth: expected htpasswd:FILE, got {value!r}")
    return Path(value[len(PREFIX) :]).expanduser().resolve()


def auth_problems(value: str | None) -> list[str]:
    if not value:
        return []
    try:
        return check_htpasswd(htpasswd_path(value))
    except LoginError as exc:
        return [str(exc)]


def check_htpasswd(path: Path) -> list[str]:
    """Problems of an htpasswd file, one ``PATH:LINE: message`` each; empty when mitmproxy can use every line."""
    try:
        if not path.is_file():
            return [f"{path}: not a regular file"]
        if path.stat().st_size > MAX_BYTES:
            return [f"{path}: larger than {MAX_BYTES // (1024 * 1024)} MiB"]
        text = path.read_text("utf-8")
    except OSError as exc:
        return [f"{path}: cannot read: {exc.strerror}"]
    except UnicodeDecodeError as exc:
        return [f"{path}: not UTF-8 text: {exc.reason}"]
    problems: list[str] = []
    users = 0
    have_bcrypt = importlib.util.find_spec("bcrypt") is not None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, pwhash = line.partition(":")
        if not sep or not user:
            problems.append(f"{path}:{number}: expected user:hash")
        elif pwhash.startswith(BCRYPT_PREFIXES):
            if not have_bcrypt:
                problems.append(
                    f"{path}:{number}: bcrypt hash for {user!r} but the 'bcrypt' package is not installed "
                    f"(mitmproxy would refuse every login): install it, or use a {{SHA}} line"
                )
            users += 1
        elif pwhash.startswith(SHA_PREFIX):
            users += 1
        else:
            problems.append(
                f"{path}:{number}: unsupported hash for {user!r}: use bcrypt (htpasswd -B) or {{SHA}} (htpasswd -s)"
            )
    if not problems and not users:
        problems.append(f"{path}: no user")
    return problems
