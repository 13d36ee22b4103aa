"""Discovery reads event files through the one bounded reader of the report and the analyst: a FIFO or an oversize
line in the events folder is skipped, never waited on or held in memory."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from enforcer.analyst.lines import MAX_LINE_BYTES
from enforcer.discover.sources import read_hits


def _hit(name: str) -> str:
    doc = {
        "@timestamp": "2026-11-30T12:00:00.000000Z",
        "event": {"action": "dns-block", "dataset": "enforcer.discovery", "type": ["denied"]},
        "source": {"ip": "10.0.0.7"},
        "rule": {"id": "wechat:cidr:101.32.104.4/32", "category": "messaging", "ruleset": "wechat"},
        "dns": {"question": {"name": name}},
        "related": {"hosts": [name], "ip": ["101.32.104.4"]},
    }
    return json.dumps(doc) + "\n"


@pytest.mark.timeout(30)
def test_a_fifo_and_an_oversize_line_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "events"
    folder.mkdir()
    os.mkfifo(folder / "trap.jsonl")  # opening it for reading would wait for a writer forever
    (folder / "dns.jsonl").write_text(
        _hit("a.example") + '{"x": "' + "y" * (MAX_LINE_BYTES + 10) + '"}\n' + _hit("b.example")
    )
    with caplog.at_level(logging.WARNING, logger="enforcer.discover"):
        hits = list(read_hits([folder], since=0.0, needles=(b"enforcer.discovery",)))
    assert [h.name for h in hits] == ["a.example", "b.example"]
    assert any("trap.jsonl" in r.getMessage() for r in caplog.records)
