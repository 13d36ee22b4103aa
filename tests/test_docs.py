"""The commands in README.md and docs/operators.md are run as written, so the docs cannot drift from the CLI.

Every code block (fenced, or indented by four spaces as these documents write them) is found and classified:

- **text** (a PAC file, a logrotate stanza, a log line shown as an example): not a command; listed in ``TEXT`` below
  with the reason, or marked in the document with ``<!-- docs-test: text (reason) -->`` on the line before the block;
- **skip**: a command that cannot run here (containers, systemd, ``make test`` itself): ``SKIP`` below gives the
  reason per command, or ``<!-- docs-test: skip (reason) -->`` before the block. Each skip and its reason is printed;
- **long-running** (``make run``, ``enforcer serve|dns|proxy|analyst``, ``mitmdump``): started, checked for
  readiness (its "ready" line, or still alive after a few seconds when it prints none), stopped with SIGINT, and
  expected to exit cleanly;
- **everything else** runs to completion with a timeout and must exit 0.

A block whose first word is not a known command and that no rule or marker classifies fails the test with a message
saying how to mark it: new documentation (docs/hardening-*.md merged later) cannot slip past unseen.

How "as written" is kept honest: each command runs through ``bash`` in a scratch copy of the repository (tracked
files but the package, which comes from the venv's editable install; modification times kept; ``.venv`` linked; so
nothing is written into the repository), with ``.venv/bin`` first on PATH (the README says ``enforcer`` is
``.venv/bin/enforcer``) and HOME in the scratch directory, inside a loopback-only network namespace (tests/netns.py:
nothing can reach a real host, and ``nft`` only touches the namespace). The changes, each printed for the commands
it touches:

- absolute paths under ``/etc`` and ``/var`` (``> /etc/bind/...``, ``--events /var/log/enforcer/...``) are moved
  under the scratch directory;
- a site address a server listens on (``10.0.0.53``) is added to the namespace's loopback;
- when ``make -n`` shows that make would rebuild ``.venv`` (a pyproject.toml or lock newer than the venv), make runs
  with ``-o .venv/.installed``: there is no network here to install from, and CI's ``make test`` runs that step;
- the input files a command expects from the admin (``devices.csv``) are created from ``FIXTURES``, with the reason.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from enforcer.cli import build_parser
from tests.conftest import ROOT, eventually, run_cli
from tests.netns import loopback_only_netns

DOCS = ("README.md", "docs/operators.md")
RUN_TIMEOUT = 90.0
READY_TIMEOUT = 90.0

# First line of a block -> why it is not a command.
TEXT = {
    "function FindProxyForURL": "a PAC file served to devices, not a shell command",
    "/var/log/enforcer/*.jsonl {": "a logrotate stanza, not a shell command",
    "analyst: --token-file": "an example of the analyst's one-line error",
    "RPZ feed: dropped a packet": "an example log line",
}

# Command (regex, searched) -> why it is not run here.
SKIP = {
    r"^make test\b": "the whole suite, which contains this test: CI runs it (make test)",
    r"^(podman|docker|docker-compose|kubectl|helm)\b": "containers: make test-image runs the image (image-test.sh)",
    r"^(systemctl|journalctl)\b": "systemd is not running here",
}

# Commands that serve until stopped -> the output line that says they are ready (None: alive for a few seconds).
LONG = {
    r"^make run\b": "Ctrl-C stops everything",
    r"^(\.venv/bin/)?enforcer serve\b": "Ctrl-C stops everything",
    r"^(\.venv/bin/)?enforcer dns\b": "listening on",
    r"^(\.venv/bin/)?enforcer proxy\b": "proxy listening",
    r"^(\.venv/bin/)?enforcer analyst\b": "analyst: serving on",
    r"^mitmdump\b": "proxy listening",
}

COMMAND_WORDS = {
    "make", "enforcer", ".venv/bin/enforcer", ".venv/bin/python", "python", "python3", "mitmdump", "dig", "kdig",
    "curl", "nft", "podman", "docker", "docker-compose", "kubectl", "helm", "systemctl", "journalctl", "sudo", "ip",
    "cp", "mkdir", "kill", "openssl", "certutil", "pip", ".venv/bin/pip", "git", ".ci/run", "bash", "sh",
}  # fmt: skip

# Input files the documented commands take from the admin -> (content, why it is made up here).
FIXTURES = {
    "devices.csv": (
        "cidr,device,owner,unit\n10.0.0.0/24,lab,ops,it\n",
        "the admin's inventory (analyst, report)",
    ),
    "inventory.csv": (
        "device,owner,unit,client_id\nphone-7,Alice Martin,Finance,phone-7\ntab-3,Bob Roy,Ops,tab-3\n",
        "the admin's inventory with ClientIDs (enforcer profile --inventory)",
    ),
}

_MARKER = re.compile(r"<!--\s*docs-test:\s*(text|skip)\s*\((.+?)\)\s*-->")
_FENCE = re.compile(r"^(\s*)(```|~~~)\s*(\w*)")


@dataclass
class Block:
    doc: str
    line: int  # 1-based line of the block's first line
    text: str
    marker: tuple[str, str] | None  # ("text" | "skip", reason) from an HTML comment before the block

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def extract_blocks(doc: str, source: str) -> list[Block]:
    """The code blocks of a Markdown document: fenced ones, and runs of lines indented 4+ spaces after a blank line."""
    lines = source.splitlines()
    blocks: list[Block] = []
    i = 0

    def marker_before(k: int) -> tuple[str, str] | None:
        j = k - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        m = _MARKER.search(lines[j]) if j >= 0 else None
        return (m.group(1), m.group(2)) if m else None

    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence:
            start, body = i, []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence.group(2)):
                body.append(lines[i])
                i += 1
            if fence.group(3) in ("", "sh", "shell", "bash", "console"):
                blocks.append(Block(doc, start + 2, textwrap.dedent("\n".join(body)), marker_before(start)))
            i += 1
            continue
        if lines[i].startswith("    ") and lines[i].strip() and (i == 0 or not lines[i - 1].strip()):
            start, body = i, []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                if not lines[i].strip() and not (i + 1 < len(lines) and lines[i + 1].startswith("    ")):
                    break
                body.append(lines[i])
                i += 1
            blocks.append(Block(doc, start + 1, textwrap.dedent("\n".join(body)).strip("\n"), marker_before(start)))
            continue
        i += 1
    return blocks


def commands(block: Block) -> list[str]:
    """Shell commands of a block: continuation lines joined, comment-only lines dropped."""
    out: list[str] = []
    pending = ""
    for raw in block.text.splitlines():
        line = raw.rstrip()
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        out.append((pending + line.strip()).strip())
        pending = ""
    return out


def classify(block: Block) -> tuple[str, str]:
    """("text" | "skip" | "commands", reason); raises AssertionError for a block nobody classified."""
    if block.marker is not None:
        return block.marker
    first = block.text.strip().splitlines()[0] if block.text.strip() else ""
    for prefix, reason in TEXT.items():
        if first.startswith(prefix):
            return "text", reason
    words = [c.split()[0] for c in commands(block)]
    unknown = [w for w in words if w not in COMMAND_WORDS]
    if not words or unknown:
        raise AssertionError(
            f"{block.where}: cannot tell whether this block is a command ({first[:60]!r}). Put "
            "'<!-- docs-test: text (why) -->' or '<!-- docs-test: skip (why) -->' on the line before it, or add a "
            f"rule to TEXT/SKIP/COMMAND_WORDS in tests/test_docs.py (unknown first word(s): {unknown})"
        )
    return "commands", ""


def all_blocks() -> list[Block]:
    return [b for doc in DOCS for b in extract_blocks(doc, (ROOT / doc).read_text())]


def _scratch_repo(dest: Path) -> Path:
    repo = dest / "repo"
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30)
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, tracked):
        src = ROOT / rel
        if not src.is_file() or rel.startswith("enforcer/"):
            # The package itself comes from the venv's editable install (this working tree, with files not yet
            # tracked); a copy here would shadow it for ``python -m enforcer`` run from the scratch directory.
            continue
        target = repo / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)  # modification times kept: make sees the venv as up to date, as in the repo
    (repo / ".venv").symlink_to(ROOT / ".venv")
    (dest / "home").mkdir()
    for name, (content, why) in FIXTURES.items():
        (repo / name).write_text(content)
        print(f"fixture {name}: {why}")
    return repo


_ABS_OUT = re.compile(r"(?<![\w.])(/(?:etc|var)/[\w./*-]+)")


def localize(command: str, scratch: Path) -> str:
    """Move absolute /etc and /var paths under the scratch directory (parents created), so nothing lands on the host."""

    def move(m: re.Match[str]) -> str:
        path = scratch / "root" / m.group(1).lstrip("/")
        (path if "." not in path.name else path.parent).mkdir(parents=True, exist_ok=True)
        return str(path)

    return _ABS_OUT.sub(move, command)


_LISTEN_IP = re.compile(r"--(?:listen|metrics)[ =](\d+\.\d+\.\d+\.\d+):\d+")


def _add_site_addresses(command: str) -> None:
    for ip in set(_LISTEN_IP.findall(command)):
        if not ip.startswith(("127.", "0.")):
            subprocess.run(["ip", "addr", "add", f"{ip}/32", "dev", "lo"], check=True, timeout=10)


def _env(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{repo / '.venv/bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    env.pop("VIRTUAL_ENV", None)
    env["HOME"] = str(repo.parent / "home")  # mitmdump's default ~/.mitmproxy lands in the scratch directory
    return env


def _run_long(command: str, repo: Path, ready: str | None) -> str:
    proc = subprocess.Popen(
        ["bash", "-c", command], cwd=repo, env=_env(repo), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace", start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    started = time.monotonic()
    try:
        if ready is None:
            time.sleep(5)
            assert proc.poll() is None, f"exited with {proc.returncode}:\n" + "\n".join(lines[-40:])
        else:

            def printed() -> bool:
                assert proc.poll() is None, f"exited with {proc.returncode}:\n" + "\n".join(lines[-40:])
                return any(ready in line for line in lines)

            eventually(printed, READY_TIMEOUT, 0.2, lambda: f"never printed {ready!r}:\n" + "\n".join(lines[-40:]))
        print(f"{command}: ready in {time.monotonic() - started:.1f} s")
    finally:
        stopping = time.monotonic()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as the docs say
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
                pytest.fail(f"{command}: did not stop on Ctrl-C in 30 s")
        reader.join(5)
        print(f"{command}: stopped in {time.monotonic() - stopping:.1f} s")
    return "\n".join(lines)


def _plan() -> list[tuple[str, str, str, str]]:
    """(where, command, action, reason) for every command of every block; unclassified blocks fail here."""
    plan = []
    for block in all_blocks():
        kind, reason = classify(block)
        if kind == "text":
            plan.append((block.where, block.text.splitlines()[0], "text", reason))
            continue
        for command in commands(block):
            if kind == "skip":
                plan.append((block.where, command, "skip", reason))
                continue
            why = next((r for pattern, r in SKIP.items() if re.search(pattern, command)), None)
            if why is not None:
                plan.append((block.where, command, "skip", why))
            elif any(re.search(pattern, command) for pattern in LONG):
                plan.append((block.where, command, "long", ""))
            else:
                plan.append((block.where, command, "run", ""))
    return plan


def test_every_block_is_classified() -> None:
    """A new block nobody marked fails here with the way to mark it; every skip says why."""
    plan = _plan()
    assert any(action == "long" and "make run" in cmd for _, cmd, action, _ in plan), "README's make run not found"
    assert any(action == "skip" and cmd == "make test" for _, cmd, action, _ in plan), "README's make test not found"
    for where, cmd, action, reason in plan:
        if action in ("text", "skip"):
            assert reason, f"{where}: {cmd}: skipped without a reason"
            print(f"{where}: {action}: {cmd[:70]!r}: {reason}")


def test_classify_rejects_an_unknown_block() -> None:
    block = extract_blocks("new.md", "Some text:\n\n    frobnicate --all\n")[0]
    with pytest.raises(AssertionError, match=r"new.md:3: .*docs-test: text"):
        classify(block)
    marked = extract_blocks("new.md", "Text:\n<!-- docs-test: skip (needs a frob) -->\n\n    frobnicate\n")[0]
    assert classify(marked) == ("skip", "needs a frob")


_TRAILING_COMMENT = re.compile(r"\s+#[^'\"]*$")


def _runnable() -> list[tuple[str, str, str]]:
    """(where, command, action) to run; a block nobody classified is left to test_every_block_is_classified.

    A command written the same way in several places (``make run`` in README.md and docs/operators.md, one with a
    trailing comment) runs once, its ``where`` naming every place: a second start of the whole stack would prove
    nothing more and cost ~15 s."""
    out: list[tuple[str, str, str]] = []
    seen: dict[str, int] = {}
    for block in all_blocks():
        try:
            kind, _ = classify(block)
        except AssertionError:
            continue
        if kind == "commands":
            for command in commands(block):
                if any(re.search(pattern, command) for pattern in SKIP):
                    continue
                action = "long" if any(re.search(pattern, command) for pattern in LONG) else "run"
                key = _TRAILING_COMMENT.sub("", command)
                if key in seen:
                    where, first, first_action = out[seen[key]]
                    out[seen[key]] = (f"{where}, {block.where}", first, first_action)
                    continue
                seen[key] = len(out)
                out.append((block.where, command, action))
    return out


@pytest.fixture(scope="module")
def scratch_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    """The scratch copy, and whether make would rebuild its .venv (then make runs with -o .venv/.installed)."""
    repo = _scratch_repo(tmp_path_factory.mktemp("docs"))
    dry = subprocess.run(["make", "-n", "run"], cwd=repo, capture_output=True, text=True, timeout=30).stdout
    return repo, dry.strip() != ".venv/bin/enforcer serve"


@pytest.mark.e2e
@pytest.mark.parametrize(("where", "command", "action"), _runnable(), ids=lambda v: str(v)[:60])
def test_documented_command_runs_as_written(
    where: str, command: str, action: str, scratch_repo: tuple[Path, bool], tmp_path: Path
) -> None:
    repo, stale = scratch_repo
    run = localize(command, tmp_path)
    if run != command:
        print(f"{where}: paths moved under the scratch directory: {run}")
    if stale and command.startswith("make "):
        run = "make -o .venv/.installed " + run.removeprefix("make ")
        print(f"{where}: .venv is older than pyproject.toml or the lock; no network to rebuild it: {run}")
    started = time.monotonic()
    with loopback_only_netns():
        _add_site_addresses(run)
        if action == "long":
            ready = next(r for pattern, r in LONG.items() if re.search(pattern, command))
            out = _run_long(run, repo, ready)
            assert out.strip(), f"{where}: {command}: printed nothing"
        else:
            done = subprocess.run(
                ["bash", "-c", run], cwd=repo, env=_env(repo), capture_output=True, text=True, timeout=RUN_TIMEOUT
            )
            assert done.returncode == 0, (
                f"{where}: {command}: exit {done.returncode}: {(done.stderr or done.stdout)[-800:]}"
            )
    print(f"{where}: ok ({action}, {time.monotonic() - started:.1f} s): {command}")


_SPAN = re.compile(r"`((?:\.venv/bin/)?enforcer [^`]+)`")
# Inline look-ups that only read the policy: run in-process and must exit 0 (a verdict is printed either way).
# A bare ```enforcer lookup``` names the command in prose; with a query it is an example to run.
_RUNNABLE = re.compile(r"^enforcer (lookup \S|check\b)")


def inline_commands() -> list[tuple[str, str]]:
    """(``DOC:LINE``, text) of every inline ```enforcer ...``` span of the documents."""
    found = []
    for doc in DOCS:
        for n, line in enumerate((ROOT / doc).read_text().splitlines(), 1):
            found.extend((f"{doc}:{n}", m.group(1).removeprefix(".venv/bin/")) for m in _SPAN.finditer(line))
    return found


def test_inline_commands_name_real_subcommands_and_flags() -> None:
    """Each inline ```enforcer SUBCOMMAND --flag ...``` names a subcommand and flags that exist (the value spellings
    in prose, ``rpz|unbound`` or ``FILE``, are not parsed); the read-only look-ups among them run and exit 0."""
    _, subparsers = build_parser()
    problems, ran = [], 0
    results: dict[str, subprocess.CompletedProcess[str]] = {}
    for where, text in inline_commands():
        words = text.split()
        if len(words) < 2 or words[1] in ("COMMAND",) or words[1].endswith(":"):  # an error line quoted in prose
            continue
        sub = subparsers.get(words[1])
        if sub is None:
            problems.append(f"{where}: `{text}`: no subcommand {words[1]!r}")
            continue
        known = {s for action in sub._actions for s in action.option_strings}
        if "--" in words:  # what follows goes to mitmdump
            words = words[: words.index("--")]
        for flag in (w.split("=", 1)[0] for w in words[2:] if w.startswith("--")):
            if flag not in known:
                problems.append(f"{where}: `{text}`: enforcer {words[1]} has no {flag}")
        placeholder = any(w.isupper() or "<" in w or "|" in w for w in words[2:])  # FILE, N, <name or URL>, a|b
        if _RUNNABLE.match(text) and not placeholder:
            if text not in results:  # the same span in several places (`enforcer check` 8 times) runs once
                results[text] = run_cli(*shlex.split(text)[1:])
            done = results[text]
            ran += 1
            if done.returncode != 0:
                problems.append(f"{where}: `{text}`: exit {done.returncode}: {(done.stderr or done.stdout)[-300:]}")
    assert ran >= 3, "the README's and operators' look-ups were not found"
    assert not problems, "inline commands that drifted from the CLI:\n" + "\n".join(problems)
