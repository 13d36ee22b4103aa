"""URL rules match what the origin will serve: path readings (dot segments, slashes, escapes, case, ;params).

The shared table (tests/data/match_cases.yaml) holds the shipped-policy rows; here the mechanism itself: RFC 3986
remove_dot_segments, the readings of one path, and a small policy where an allow exception and a block rule meet.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from enforcer.policy import load_policy
from enforcer.policy.urlrules import remove_dot_segments, request_paths
from tests.policy.policy_helpers import app_yaml, write


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # RFC 3986 section 5.2.4 and 5.4 examples, on absolute paths.
        ("/a/b/c/./../../g", "/a/g"),
        ("/b/c/d;p/../g", "/b/c/g"),
        ("/./g", "/g"),
        ("/../g", "/g"),
        ("/../../g", "/g"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/b/../", "/a/"),
        ("/g.", "/g."),
        ("/.g", "/.g"),
        ("/g..", "/g.."),
        ("/", "/"),
        ("//a///b", "/a/b"),
        ("/a//../b", "/b"),
    ],
)
def test_remove_dot_segments(path: str, expected: str) -> None:
    assert remove_dot_segments(path) == expected


def test_readings_of_a_path() -> None:
    assert request_paths("/weixin/x.apk") == ("/weixin/x.apk",)
    assert request_paths("") == ("/",)
    assert request_paths("/x/%2e%2e/weixin/x") == ("/weixin/x", "/x/../weixin/x")
    assert request_paths("/qqfile%2f..%2fweixin") == ("/weixin", "/qqfile/../weixin")
    assert request_paths("\\weixin\\x")[0] == "/weixin/x"
    assert request_paths("/a;p=1/../weixin;q/x") == ("/weixin;q/x", "/a;p=1/../weixin;q/x", "/weixin/x")
    assert request_paths("/%252e/x") == ("/%2e/x",)  # decoded once only


def test_canonical_reading_is_idempotent_and_absolute() -> None:
    rng = random.Random(10)
    alphabet = ["/", "//", ".", "..", "%2e", "%2F", "\\", "a", "weixin", ";p", "%", "%zz"]
    for _ in range(3000):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        canonical = request_paths(raw)[0]
        assert canonical.startswith("/"), raw
        assert "//" not in canonical and "/./" not in canonical and "/../" not in canonical, raw
        assert not canonical.endswith(("/.", "/..")), raw
        assert remove_dot_segments(canonical) == canonical, raw


RULES = """\
block:
  - domain: dl.example.com
    category: download
  - url: "files.example.org/app/*"
    category: download
  - url: "files.example.org/Docs/*"
    category: download
allow:
  - url: "dl.example.com/public/*"
"""


def test_block_wins_across_readings(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, "t.yaml", app_yaml("t", RULES)))

    def verdict(url: str) -> str:
        m = policy.match_url(url)
        return "none" if m is None else m.verdict

    # The canonical reading decides the allow exception...
    assert verdict("https://dl.example.com/public/readme.txt") == "allow"
    assert verdict("https://dl.example.com//public/./readme.txt") == "allow"
    # ...but an allow exception cannot be used to climb out of its folder.
    assert verdict("https://dl.example.com/public/../private/x.apk") == "block"
    assert verdict("https://dl.example.com/public/%2e%2e/private/x.apk") == "block"
    assert verdict("https://dl.example.com/PUBLIC/readme.txt") == "block"  # only /public/ is excepted
    # Blocked folders under every reading, in both cases (a glob with upper case too).
    for path in ("/app/x", "//app/x", "/x/../app/x", "/APP/x", "/app;v=1/x", "/docs/a", "/DOCS/a", "/Docs/a"):
        assert verdict("http://files.example.org" + path) == "block", path
    for path in ("/other/x", "/other/app/x", "/appx", "/%252e/app/x"):
        assert verdict("http://files.example.org" + path) == "none", path
