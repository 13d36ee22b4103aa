"""Times, cursors and limits are validated (issue 10, item 14), through the real aiohttp app and the real CLI.

Every bad value is 400 with a JSON body of one line (API) or exit 1 with one line (``enforcer report``), never a 500,
a traceback or an OverflowError; both go through the one parser, ``report.parse_range``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from enforcer.analyst.web import build_app
from tests.analyst.analyst_helpers import generate, local_analyst, write_events
from tests.conftest import BLOCKLISTS, ROOT, run_cli

BAD_TIMES = {
    "year-1": {"since": "0001-01-01"},
    "year-1-offset": {"until": "0001-01-01T00:00:00+01:00"},
    "year-9999-negative-offset": {"since": "9999-12-31T23:00:00-05:00"},
    "before-1970": {"since": "1969-12-31T23:59:59Z"},
    "huge-duration": {"since": "99999999999d"},
    "huge-weeks": {"until": "999999999999999w"},
    "duration-before-1970": {"since": "36500d"},
    "long-fraction": {"since": "1.1234567d"},
    "exponent": {"since": "1e400d"},
    "not-a-time": {"since": "yesterday"},
    "month-13": {"until": "2023-13-01"},
    "non-ascii-digits": {"since": "２０２３-１０-３０"},
    "very-long": {"since": "2023-10-30" + "0" * 5000},
    "until-before-since": {"since": "2024-01-02", "until": "2024-01-01"},
}
BAD_PAGING = {
    "cursor-beyond-int64": {"cursor": "99999999999999999999.b00"},
    "cursor-beyond-9999": {"cursor": "999999999999999999.b00"},
    "cursor-negative": {"cursor": "-1.b00"},
    "cursor-kind": {"cursor": "1.x00"},
    "cursor-odd-hex": {"cursor": "1.b0"},
    "cursor-bad-utf8": {"cursor": "1.tff"},
    "cursor-trailing": {"cursor": "1.b00\n"},
    "cursor-no-dot": {"cursor": "12345"},
    "limit-negative": {"limit": "-1"},
    "limit-zero": {"limit": "0"},
    "limit-huge": {"limit": "99999999999999999999999"},
    "limit-float": {"limit": "1e3"},
    "limit-sign": {"limit": "+5"},
    "limit-underscore": {"limit": "1_0"},
    "limit-full-width": {"limit": "１０"},
}


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path, policy) -> Any:
    write_events(tmp_path / "ev.jsonl", generate(policy, 50, seed=51))
    analyst = local_analyst(tmp_path, [str(tmp_path / "ev.jsonl")])
    analyst.ingester.poll_once()
    cl = await aiohttp_client(build_app(analyst))
    yield cl
    analyst.close()


async def _assert_400(client: Any, path: str, params: dict[str, str]) -> str:
    resp = await client.get(path, params=params)
    text = await resp.text()
    assert resp.status == 400, (path, params, resp.status, text[:300])
    body = await resp.json()
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"], body
    assert "Traceback" not in text
    return str(body["error"])


@pytest.mark.parametrize("case", list(BAD_TIMES))
async def test_bad_times_are_400_on_every_endpoint(client: Any, case: str) -> None:
    params = BAD_TIMES[case]
    for path in ("/api/events", "/api/report", "/api/report.csv", "/api/dashboard"):
        error = await _assert_400(client, path, params)
        assert error.startswith(("since:", "until")), error


@pytest.mark.parametrize("case", list(BAD_PAGING))
async def test_bad_cursors_and_limits_are_400(client: Any, case: str) -> None:
    error = await _assert_400(client, "/api/events", BAD_PAGING[case])
    assert ("cursor" in error) if "cursor" in case else ("limit" in error)


async def test_edges_that_are_valid(client: Any) -> None:
    for params in (
        {"since": "1970-01-01"},
        {"until": "9999-12-31T23:59:59Z"},
        {"since": "3650d"},
        {"since": "2024-01-01", "until": "2024-01-01"},  # empty range, not an error
        {"since": " 2023-10-30 "},
        {"limit": "1000"},
        {"limit": "1"},
    ):
        resp = await client.get("/api/events", params=params)
        assert resp.status == 200, (params, await resp.text())
    # A cursor from the API itself still pages.
    first = await (await client.get("/api/events", params={"limit": "10"})).json()
    assert first["next"]
    resp = await client.get("/api/events", params={"limit": "10", "cursor": first["next"]})
    assert resp.status == 200 and len((await resp.json())["events"]) == 10


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "enforcer", "report", "--blocklist", str(BLOCKLISTS), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_bad_times_are_one_line_and_exit_1_in_the_cli(tmp_path: Path, policy) -> None:
    write_events(tmp_path / "ev.jsonl", generate(policy, 20, seed=52))
    for case, params in BAD_TIMES.items():
        args = [f"--{k}={v}" for k, v in params.items()]
        out = run_cli("report", "--blocklist", str(BLOCKLISTS), "--events", str(tmp_path / "ev.jsonl"), *args)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 1 and len(lines) == 1, (case, out.stderr[-1500:])
        assert lines[0].startswith(("report: since:", "report: until")), (case, lines[0])
        assert out.stdout == ""
    # The real process, once: the same bounds accepted end to end.
    out = _cli("--events", str(tmp_path / "ev.jsonl"), "--since=3650d", "--until=9999-12-31", "--format=json")
    assert out.returncode == 0, out.stderr
