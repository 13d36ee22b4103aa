"""The request decision memo (enforcer/proxy/decide.py ``RequestMemo``): same answers as ``match_request``, bounded,
emptied by a policy reload."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from enforcer.policy import Policy, load_policy
from enforcer.proxy.addon import EnforcerAddon
from enforcer.proxy.decide import MEMO_MAX_PATH, MEMO_SIZE, RequestMemo, UnparsableRequest, match_request
from tests.conftest import BLOCKLISTS
from tests.proxy.helpers import harness, request_flow, run_hook, write_policy

REQUESTS = [
    ("https", ["dldir1.qq.com"], 443, "/weixin/android/weixin8.apk", "GET"),
    ("https", ["dldir1.qq.com"], 443, "/other/file.zip", "GET"),
    ("http", ["203.0.113.7"], 80, "/mmtls/0000abcd", "POST"),
    ("http", ["203.0.113.7"], 80, "/mmtls/0000ABCD", "POST"),
    ("http", ["www.example.org", "weixin.qq.com"], 80, "/", "GET"),
    ("https", ["127.0.0.1", "localhost"], 8443, "/qqfile/ok", "GET"),
    ("https", ["www.kaspersky.com"], 443, "/bases/x.kdc?a=1", "GET"),
    ("https", ["www.kaspersky.com"], 443, "/bases/../downloads/x", "GET"),
]


@pytest.fixture(scope="module")
def shipped() -> Policy:
    return load_policy([BLOCKLISTS])


def test_the_memo_answers_what_match_request_answers(shipped: Policy) -> None:
    memo = RequestMemo()
    expected = [match_request(shipped, *r) for r in REQUESTS]
    assert any(m is not None and m.blocked for m, _ in expected)  # the list has blocked and allowed requests
    assert any(m is None for m, _ in expected)
    for round_ in range(3):
        assert [memo.match(shipped, *r) for r in REQUESTS] == expected, round_
    assert memo.misses == len(REQUESTS) and memo.hits == 2 * len(REQUESTS)


def test_a_request_no_host_of_which_parses_is_refused_every_time(shipped: Policy) -> None:
    memo = RequestMemo()
    for _ in range(2):
        with pytest.raises(UnparsableRequest):
            memo.match(shipped, "http", ["[::1"], 80, "/", "GET")
    assert len(memo) == 0


def test_the_memo_is_bounded_and_long_paths_are_not_kept(shipped: Policy) -> None:
    memo = RequestMemo()
    for i in range(MEMO_SIZE):
        memo.match(shipped, "https", ["dldir1.qq.com"], 443, f"/weixin/{i}.apk", "GET")
    assert len(memo) == MEMO_SIZE
    for i in range(50):  # full: emptied, then filled again
        memo.match(shipped, "https", ["dldir1.qq.com"], 443, f"/weixin/more-{i}.apk", "GET")
    assert len(memo) == 50
    long_path = "/weixin/" + "a" * MEMO_MAX_PATH
    for _ in range(2):
        match, _ = memo.match(shipped, "https", ["dldir1.qq.com"], 443, long_path, "GET")
        assert match is not None and match.blocked
    assert len(memo) == 50 and memo.hits == 0


def test_a_reload_empties_the_memo_so_a_new_rule_blocks_the_next_same_request(tmp_path: Path) -> None:
    path = write_policy(tmp_path)
    a = EnforcerAddon()
    with harness(a) as tctx:
        tctx.configure(a, enforcer_blocklist=str(tmp_path))
        for _ in range(2):  # decided, then answered from the memo
            f = request_flow("http://newly.test/download/x.bin")
            run_hook(a, "requestheaders", f)
            assert f.response is None and f.metadata.get("enforcer") is None
        assert a.runtime.requests.hits == 1
        path.write_text(path.read_text() + '  - url: "newly.test/download/*"\n    category: download\n')
        holder = a.runtime.holder
        assert holder is not None and holder.reload()
        f = request_flow("http://newly.test/download/x.bin")
        run_hook(a, "requestheaders", f)
        assert f.response is not None and f.response.status_code == 403
        assert f.metadata["enforcer"]["rule"].startswith("testapp:url:")
    run_hook(a, "done")


def test_the_memo_does_not_keep_a_replaced_policy_alive(tmp_path: Path) -> None:
    write_policy(tmp_path)
    memo = RequestMemo()
    old = load_policy([tmp_path])
    memo.match(old, "https", ["shared.test"], 443, "/app/x.exe", "GET")
    gone = weakref.ref(old)
    del old
    gc.collect()
    assert gone() is None  # only the memo saw it
    new = load_policy([tmp_path])
    match, _ = memo.match(new, "https", ["shared.test"], 443, "/app/x.exe", "GET")
    assert match is not None and match.blocked and memo.misses == 2 and len(memo) == 1
