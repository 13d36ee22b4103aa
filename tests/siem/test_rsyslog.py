"""The shipped rsyslog config (docker/siem/rsyslog-enforcer.conf), run by the real rsyslogd: it tails the event files
that EventWriter writes and delivers every event to an Elasticsearch bulk-API stub and a syslog TCP listener, both
on 127.0.0.1, with event.id as the document id."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web

from enforcer.events import EventWriter, HitEvent
from tests.conftest import ROOT, free_port, require_tool

CONF = ROOT / "docker" / "siem" / "rsyslog-enforcer.conf"
pytestmark = pytest.mark.e2e


def _events(n: int) -> list[HitEvent]:
    return [
        HitEvent(
            timestamp=datetime(2026, 11, 1, 12, 0, i, tzinfo=UTC),
            action="dns-block",
            component="dns",
            rule_id="wechat:domain:weixin.qq.com",
            app="wechat",
            category="messaging",
            reference="blocklists/wechat.yaml:20",
            version="f" * 64,
            source_ip=f"10.1.0.{i + 1}",
            source_port=5000 + i,
            dns_question_name="long.weixin.qq.com",
            dns_question_type="A",
        )
        for i in range(n)
    ]


async def test_rsyslog_ships_events_to_elasticsearch_and_syslog(tmp_path: Path) -> None:
    rsyslogd = require_tool("rsyslogd")
    bulk_lines: list[str] = []

    async def bulk(request: web.Request) -> web.Response:
        body = (await request.read()).decode()
        lines = [ln for ln in body.splitlines() if ln.strip()]
        bulk_lines.extend(lines)
        items = [{"create": {"status": 201}} for _ in lines[::2]]
        return web.json_response({"took": 1, "errors": False, "items": items})

    async def anything(request: web.Request) -> web.Response:
        return web.json_response({"version": {"number": "8.15.0"}})

    app = web.Application()
    app.router.add_post("/{tail:.*}_bulk", bulk)
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app)
    await runner.setup()
    es_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", es_port).start()

    syslog_frames: list[str] = []

    async def on_syslog(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                length = int((await reader.readuntil(b" ")).strip())
                syslog_frames.append((await reader.readexactly(length)).decode())
            except (asyncio.IncompleteReadError, ValueError):
                break
        writer.close()

    syslog_port = free_port()
    syslog_server = await asyncio.start_server(on_syslog, "127.0.0.1", syslog_port)

    events_dir = tmp_path / "events"
    events_dir.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    main_conf = tmp_path / "rsyslog.conf"
    main_conf.write_text(f'global(workDirectory="{work}")\ninclude(file="{CONF}")\n')
    env = dict(
        os.environ,
        ENFORCER_EVENTS=str(events_dir / "*.jsonl"),
        ENFORCER_ES_HOST="127.0.0.1",
        ENFORCER_ES_PORT=str(es_port),
        ENFORCER_ES_INDEX="enforcer-events",
        ENFORCER_SYSLOG_HOST="127.0.0.1",
        ENFORCER_SYSLOG_PORT=str(syslog_port),
    )
    check = subprocess.run([rsyslogd, "-N1", "-f", str(main_conf)], env=env, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr

    proc = subprocess.Popen(
        [rsyslogd, "-n", "-f", str(main_conf), "-i", str(tmp_path / "rsyslogd.pid")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    events = _events(3)
    writer = EventWriter(events_dir / "dns.jsonl")
    try:
        for e in events:
            writer.emit(e)
        writer.flush()
        for _ in range(200):
            if len(bulk_lines) >= 6 and len(syslog_frames) >= 3:
                break
            await asyncio.sleep(0.1)
    finally:
        writer.close()
        proc.terminate()
        out = proc.communicate(timeout=15)[0].decode(errors="replace")
        syslog_server.close()
        await runner.cleanup()

    assert len(bulk_lines) == 6, f"Elasticsearch got {bulk_lines!r}\nrsyslogd said:\n{out}"
    actions = [json.loads(x) for x in bulk_lines[0::2]]
    docs = [json.loads(x) for x in bulk_lines[1::2]]
    assert [a["create"]["_id"] for a in actions] == [e.id for e in events]
    assert all(a["create"]["_index"] == "enforcer-events" for a in actions)
    assert docs == [e.to_ecs() for e in events]
    assert len(syslog_frames) == 3, f"syslog got {syslog_frames!r}\nrsyslogd said:\n{out}"
    for frame, e in zip(syslog_frames, events, strict=True):
        assert frame.startswith("<173>1 ")  # local5.notice
        assert " enforcer - dns-block - " in frame
        assert json.loads(frame.split(" - dns-block - ", 1)[1]) == e.to_ecs()
