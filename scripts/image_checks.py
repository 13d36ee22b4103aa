"""Runtime checks of the built enforcer image, driven by scripts/image-test.sh (run it, not this, by hand).

Parts:
- ``defaults``: the image's own command and 0.0.0.0 defaults, only with ``--network none`` (nothing reachable): it
  starts read-only and prints a summary whose DNS hint is not ``dig @0.0.0.0``.
- ``serve``: ``serve`` with host networking on 127.0.0.1 listeners against a local fake upstream
  (tests/dns/fakeupstream.py); then a DNS query (sinkhole + EDE, and a forwarded name), the proxy's block page, the
  analyst with and without its token, ``podman healthcheck run``, every process as uid 10001, every listening socket
  on 127.0.0.1, the events on the volume owned by uid 10001, and a clean stop.
- ``compose``: docker/compose.yaml + tests/docker/compose.loopback.yaml started by podman-compose (resolver, proxy,
  analyst read-only, host network on 127.0.0.1 ports), the analyst token from a secret file of mode 0600 owned by
  root, each service's own healthcheck, the same DNS / proxy / analyst checks; and the token step failing once with
  one clear line for an empty secret.

Names that are banned (weixin.qq.com, dldir1.qq.com) are asked only of enforcer: the resolver's upstream is the local
fake one and the proxy container resolves dldir1.qq.com to 127.0.0.1 (--add-host), so a fail-open reaches nothing.
Every step has a deadline; the first failed check raises Failed, printed by main() as one line (exit 1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import dns.rcode
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.dns.fakeupstream import FakeUpstream  # noqa: E402  (the repository root is put on the path first)

UID = 10001
PREFIX = "enforcer-image-test"
BLOCKED_DNS = "weixin.qq.com"
BLOCKED_URL = "http://dldir1.qq.com/weixin/android/weixin8049android2600_arm64.apk"
BLOCKED_HOST = "dldir1.qq.com"
FORWARDED = "allowed.example"


class Failed(Exception):
    """One check failed: the message is the single line image-test.sh prints."""


def podman(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    try:
        out = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failed(f"podman {' '.join(args[:3])} ... did not finish in {timeout:.0f} s") from None
    if check and out.returncode != 0:
        raise Failed(f"podman {' '.join(args[:3])} ... failed: {(out.stderr or out.stdout).strip()[-300:]}")
    return out


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (DNS listens on both)."""
    for _ in range(50):
        with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(port)
    raise Failed("no free port on 127.0.0.1")


def wait_for(what: str, fn: object, timeout: float, interval: float = 0.3) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, httpx.HTTPError, dns.exception.DNSException):
            last = fn()  # type: ignore[operator]
            if last:
                return last
        time.sleep(interval)
    raise Failed(f"{what}: not within {timeout:.0f} s")


def logs(name: str) -> str:
    out = podman("logs", name, check=False)
    return out.stdout + out.stderr


def wait_summary(name: str, timeout: float = 90) -> str:
    def ready() -> str:
        text = logs(name)
        state = podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip()
        if state in ("exited", "stopped"):
            raise Failed(f"{name} exited during start-up: {text.strip()[-400:]}")
        return text if "Ctrl-C stops everything." in text else ""

    return str(wait_for(f"{name}: serve summary", ready, timeout))


# -- the checks shared by `serve` and `compose` ---------------------------------------------------------------------
def check_dns(port: int, upstream: FakeUpstream) -> None:
    def ask(name: str) -> dns.message.Message:
        q = dns.message.make_query(name, "A", use_edns=0)
        return dns.query.udp(q, "127.0.0.1", port=port, timeout=2)

    msg = wait_for("DNS answer from the resolver", lambda: ask(BLOCKED_DNS), 30)
    assert isinstance(msg, dns.message.Message)
    addrs = [r.address for rrset in msg.answer for r in rrset if hasattr(r, "address")]
    ede = [(o.code, o.text or "") for o in msg.options if isinstance(o, dns.edns.EDEOption)]
    if msg.rcode() != dns.rcode.NOERROR or addrs != ["0.0.0.0"]:
        raise Failed(f"DNS: {BLOCKED_DNS} not sinkholed: rcode {dns.rcode.to_text(msg.rcode())}, answer {addrs}")
    if not ede or ede[0][0] != 15:
        raise Failed(f"DNS: {BLOCKED_DNS} sinkholed without EDE 15 (Blocked): {ede}")
    if BLOCKED_DNS in upstream.names():
        raise Failed(f"DNS: the blocked name {BLOCKED_DNS} was forwarded upstream")
    fwd = ask(FORWARDED)
    got = [r.address for rrset in fwd.answer for r in rrset if hasattr(r, "address")]
    if got != ["192.0.2.53"] or FORWARDED not in upstream.names():
        raise Failed(f"DNS: {FORWARDED} not answered by the local fake upstream: {got}")


def check_proxy(port: int) -> None:
    def get() -> httpx.Response:
        with httpx.Client(proxy=f"http://127.0.0.1:{port}", timeout=10, trust_env=False) as c:
            return c.get(BLOCKED_URL)

    r = wait_for("proxy answer", get, 30)
    assert isinstance(r, httpx.Response)
    if r.status_code != 403 or "wechat:" not in r.headers.get("x-enforcer-rule", ""):
        raise Failed(f"proxy: {BLOCKED_URL} got {r.status_code} {r.headers.get('x-enforcer-rule')!r}, not the block")
    if "text/html" not in r.headers.get("content-type", "") or "WeChat" not in r.text:
        raise Failed("proxy: the 403 carries no block page")


def check_analyst(port: int, token: str) -> None:
    base = f"http://127.0.0.1:{port}"
    wait_for(
        "analyst /healthz", lambda: httpx.get(base + "/healthz", timeout=5, trust_env=False).status_code == 200, 30
    )
    anon = httpx.get(base + "/api/report", timeout=10, trust_env=False)
    if anon.status_code != 401:
        raise Failed(f"analyst: /api/report without the token answered {anon.status_code}, not 401")
    auth = httpx.get(base + "/api/report", headers={"Authorization": f"Bearer {token}"}, timeout=10, trust_env=False)
    if auth.status_code != 200:
        raise Failed(f"analyst: /api/report with the token answered {auth.status_code}, not 200")


def check_health(name: str) -> None:
    out = podman("healthcheck", "run", name, check=False, timeout=30)
    if out.returncode != 0:
        raise Failed(f"podman healthcheck run {name}: {(out.stdout + out.stderr).strip() or 'unhealthy'}")


def host_pids(name: str) -> list[int]:
    out = podman("top", name, "hpid", timeout=20).stdout.split()
    return [int(p) for p in out[1:] if p.isdigit()]


def check_uid(name: str) -> None:
    pids = host_pids(name)
    if not pids:
        raise Failed(f"{name}: no processes")
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        if any(int(u) != UID for u in uids):
            raise Failed(f"{name}: process {pid} runs as uid {uids}, not {UID}")


def _listening_inodes() -> dict[int, str]:
    """inode -> 'proto address' of every listening TCP socket and bound UDP socket on the host."""
    found: dict[int, str] = {}
    for proto in ("tcp", "udp", "tcp6", "udp6"):
        for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
            f = line.split()
            if proto.startswith("tcp") and f[3] != "0A":  # LISTEN
                continue
            found[int(f[9])] = f"{proto} {_addr(f[1])}"
    return found


def _addr(hexaddr: str) -> str:
    host, port = hexaddr.split(":")
    if len(host) == 8:
        ip = socket.inet_ntop(socket.AF_INET, bytes.fromhex(host)[::-1])
    else:
        raw = bytes.fromhex(host)
        ip = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
    return f"{ip}:{int(port, 16)}"


def check_loopback_only(name: str) -> None:
    sockets = _listening_inodes()
    seen = []
    for pid in host_pids(name):
        with contextlib.suppress(FileNotFoundError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inode = int(target[8:-1])
                        if inode in sockets:
                            seen.append(sockets[inode])
    if not seen:
        raise Failed(f"{name}: no listening socket found")
    wide = [s for s in seen if not s.split()[1].startswith(("127.", "::1", "::ffff:127."))]
    if wide:
        raise Failed(f"{name}: listens beyond 127.0.0.1: {sorted(set(wide))}")


def check_clean_stop(name: str, timeout: int = 30) -> None:
    started = time.monotonic()
    podman("stop", "--time", str(timeout), name, timeout=timeout + 30)
    took = time.monotonic() - started
    code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
    if code != "0" or took >= timeout:
        raise Failed(f"{name}: stop took {took:.0f} s with exit status {code} (a clean stop exits 0 on SIGTERM)")


# -- parts ----------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def container(name: str) -> Iterator[str]:
    podman("rm", "--force", "--ignore", name, check=False)
    try:
        yield name
    finally:
        # --volumes: the image's VOLUME gives every container an anonymous volume, left behind without it.
        podman("rm", "--force", "--ignore", "--volumes", "--time", "5", name, check=False)


def part_defaults(image: str) -> None:
    with container(f"{PREFIX}-defaults") as name:
        podman(
            "run",
            "--detach",
            "--name",
            name,
            "--network",
            "none",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--health-interval",
            "disable",
            image,
        )
        text = wait_summary(name)
        # The summary only, not the children's own log lines around it.
        text = text[text.index("enforcer serve:") : text.index("Ctrl-C stops everything.")]
        if "@0.0.0.0" in text or "http://0.0.0.0" in text:
            raise Failed("serve's summary points clients at 0.0.0.0 (not a reachable address)")
        check_clean_stop(name)


def part_serve(image: str) -> None:
    up = FakeUpstream()
    dns_port, dns_metrics, proxy_port, proxy_metrics, analyst_port = (free_port() for _ in range(5))
    volume = f"{PREFIX}-data"
    podman("volume", "rm", "--force", volume, check=False)
    podman("volume", "create", volume)
    try:
        with container(f"{PREFIX}-serve") as name:
            podman(
                "run", "--detach", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
                "--add-host", f"{BLOCKED_HOST}:127.0.0.1", "--health-interval", "disable",
                "--env", f"ENFORCER_HEALTH=dns:127.0.0.1:{dns_port}", "--volume", f"{volume}:/var/lib/enforcer",
                image, "serve", "--config", "/etc/enforcer/enforcer.yaml",
                "--dns-listen", f"127.0.0.1:{dns_port}", "--dns-metrics", f"127.0.0.1:{dns_metrics}",
                "--proxy-listen", f"127.0.0.1:{proxy_port}", "--proxy-metrics", f"127.0.0.1:{proxy_metrics}",
                "--analyst-listen", f"127.0.0.1:{analyst_port}", "--upstream", up.address,
            )  # fmt: skip
            wait_summary(name)
            check_dns(dns_port, up)
            check_proxy(proxy_port)
            mount = Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout.strip())
            token = (mount / "analyst.token").read_text().strip()
            check_analyst(analyst_port, token)
            check_health(name)
            check_uid(name)
            check_loopback_only(name)
            check_clean_stop(name)
            check_events(mount)
    finally:
        up.close()
        podman("volume", "rm", "--force", volume, check=False)


def check_events(mount: Path) -> None:
    for path, needle in ((mount / "events/dns.jsonl", BLOCKED_DNS), (mount / "events/proxy.jsonl", BLOCKED_HOST)):
        if not path.is_file() or needle not in path.read_text():
            raise Failed(f"events: {path.name} on the volume does not record {needle}")
        if path.stat().st_uid != UID:
            raise Failed(f"events: {path.name} is owned by uid {path.stat().st_uid}, not {UID}")
        json.loads(path.read_text().splitlines()[-1])  # one JSON object per line
    if (mount / "analyst.token").stat().st_mode & 0o077:
        raise Failed("the analyst token serve created is readable by others")


def part_compose(image: str, compose: str) -> None:
    up = FakeUpstream()
    ports = {k: free_port() for k in ("DNS", "DNS_METRICS", "PROXY", "PROXY_METRICS", "ANALYST")}
    project = f"{PREFIX}-compose"
    with tempfile.TemporaryDirectory(prefix=PREFIX) as tmp:
        token_file = Path(tmp) / "analyst_token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600)  # what `umask 077; echo ... >` leaves
        os.write(fd, b"compose-test-token\n")
        os.close(fd)
        env = {
            **os.environ,
            "ENFORCER_IMAGE": image,
            "ENFORCER_ANALYST_TOKEN_FILE": str(token_file),
            "ENFORCER_UPSTREAM": up.address,
            **{f"ENFORCER_{k}_PORT": str(v) for k, v in ports.items()},
        }
        files = ["-f", str(ROOT / "docker/compose.yaml"), "-f", str(ROOT / "tests/docker/compose.loopback.yaml")]

        def run(*args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
            cmd = [compose, "--project-name", project, *files, *args]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise Failed(f"podman-compose {' '.join(args)}: not done in {timeout:.0f} s") from None
            if check and out.returncode != 0:
                raise Failed(f"podman-compose {' '.join(args)}: {(out.stderr or out.stdout).strip()[-400:]}")
            return out

        def teardown() -> None:
            # The containers' anonymous volumes (the image's VOLUME) first; `down --volumes` takes the named ones.
            for cname in (f"{project}_{s}_1" for s in ("resolver", "proxy", "analyst", "analyst-token")):
                podman("rm", "--force", "--ignore", "--volumes", "--time", "10", cname, check=False)
            run("down", "--volumes", "--timeout", "10", check=False)

        try:
            run("up", "--detach", "--no-build", "resolver", "proxy", "analyst")
            names = {s: f"{project}_{s}_1" for s in ("resolver", "proxy", "analyst", "analyst-token")}
            token_code = wait_for(
                "analyst-token step",
                lambda: (
                    podman(
                        "inspect",
                        "--format",
                        "{{.State.Status}} {{.State.ExitCode}}",
                        names["analyst-token"],
                        check=False,
                    )
                    .stdout.strip()
                    .startswith("exited")
                    and podman("inspect", "--format", "{{.State.ExitCode}}", names["analyst-token"]).stdout.strip()
                ),
                60,
            )
            if token_code != "0":
                raise Failed(f"compose: analyst-token exited {token_code}: {logs(names['analyst-token']).strip()}")
            for svc in ("resolver", "proxy", "analyst"):
                ro = podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", names[svc]).stdout.strip()
                if ro != "true":
                    raise Failed(f"compose: {svc} does not run read-only")
            check_dns(ports["DNS"], up)
            check_proxy(ports["PROXY"])
            check_analyst(ports["ANALYST"], "compose-test-token")
            for svc in ("resolver", "proxy", "analyst"):
                check_health(names[svc])
                check_uid(names[svc])
                check_loopback_only(names[svc])
            # A bad secret, from a clean start: the token step fails once with one clear line and is not restarted;
            # the analyst is either not started (a failed dependency) or waits with one line: no restart loop.
            teardown()
            token_file.write_text("")
            run("up", "--detach", "--no-build", "analyst", check=False)
            time.sleep(8)
            status = podman(
                "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}", names["analyst-token"]
            ).stdout.split()
            text = logs(names["analyst-token"]).strip()
            # One line per start: podman-compose starts the step, and podman starts it once more as the analyst's
            # dependency (--requires); never by a restart policy (RestartCount 0).
            lines = set(text.splitlines())
            if status != ["exited", "1", "0"] or len(lines) != 1 or "analyst_token is missing or empty" not in text:
                raise Failed(
                    f"compose: an empty secret did not fail the token step once with a clear line: {status} {text!r}"
                )
            state = podman("inspect", "--format", "{{.State.Status}} {{.RestartCount}}", names["analyst"], check=False)
            waiting = [line for line in logs(names["analyst"]).splitlines() if "analyst: waiting for" in line]
            if state.returncode == 0 and (
                state.stdout.split()[1] != "0" or (state.stdout.split()[0] == "running" and len(waiting) != 1)
            ):
                raise Failed(f"compose: without a token the analyst is {state.stdout.strip()!r}, {len(waiting)} lines")
        finally:
            teardown()
            up.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["defaults", "serve", "compose"])
    p.add_argument("--image", required=True)
    p.add_argument("--compose", help="the podman-compose executable (part compose)")
    args = p.parse_args()
    try:
        if args.part == "defaults":
            part_defaults(args.image)
        elif args.part == "serve":
            part_serve(args.image)
        else:
            part_compose(args.image, args.compose or "podman-compose")
    except Failed as exc:
        print(f"image-test: FAIL: {exc}", file=sys.stderr)
        return 1
    print(f"image-test: {args.part}: ok", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
