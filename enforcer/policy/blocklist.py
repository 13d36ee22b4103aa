"""Parse and validate blocklist YAML files (and their ``include:`` feeds) into a frozen ``Policy``.

Every problem is reported with the file, line and column of the YAML node (or feed line) that caused it, and all
problems of all files are collected before failing, so one ``enforcer check`` run shows everything to fix.

Flow: ``load_policy(paths)`` -> ``_expand_paths`` -> per file ``_FileParser`` (YAML node tree -> AppPolicy + Rules,
feeds read as they are met) -> ``_Builder`` (name/host tables, url index, CIDRs, precedence, duplicate/shadow and
over-broad warnings (``lint``), fingerprint) -> ``Policy``.

Every input is bounded (``Limits``): ``read_regular`` opens only regular files (a FIFO, a device or a symlink to one
is refused without blocking), reads at most the size cap, and ``_BoundedLoader`` stops YAML nesting at a fixed depth
(PyYAML composes recursively: 500 nested brackets would be a RecursionError). An include feed must live inside the
folder of the file that includes it, so a blocklist edit cannot make the loader read (and echo) a foreign file.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
import yaml.composer

from . import lint
from .matcher import Policy
from .model import CATEGORIES, AppPolicy, IPNetwork, PolicyError, Problem, Rule
from .names import _ASCII_NAME_RE, MAX_NAME, InvalidName, normalize_name, parents
from .urlrules import STORES, InvalidPattern, UrlIndex, UrlPattern, check_store_id, compile_store_rule, compile_url_rule

APP_RE = re.compile(r"[a-z0-9-]+")
METHOD_RE = re.compile(r"[A-Z]{3,10}")
TOP_KEYS = {"app", "name", "vendor", "policy", "block", "allow"}
POLICY_KEYS = {"effective", "timezone", "exempt_clients", "notice", "reference"}
RULE_KINDS = ("domain", "host", "url", "cidr", "store", "include")
RULE_EXTRA_KEYS = {"category", "source", "id", "method", "comment"}
HOSTS_FILE_SKIP = {"localhost", "localhost.localdomain", "local", "broadcasthost", "ip6-localhost", "ip6-loopback"}
MAX_FEED_ERRORS = 20
MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on what one load may read. A 1M-name feed is ~25 MB; the shipped YAML files are a few KB each."""

    yaml_bytes: int = 8 * MiB
    feed_bytes: int = 64 * MiB
    yaml_depth: int = 32  # the blocklist schema needs 4 levels (top, block, rule, store); 32 leaves room


DEFAULT_LIMITS = Limits()


class Unreadable(Exception):
    """A file that is not read: missing, not a regular file, or over its size cap. The message says which."""


def _file_kind(mode: int) -> str:
    for test, what in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return what
    return "not a plain file"


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes:
    """Read a regular file of at most ``limit`` bytes; raise ``Unreadable`` otherwise, never block.

    The path is checked with stat() before opening (so a device is never even opened), then opened with O_NONBLOCK
    (a FIFO swapped in meanwhile cannot block open()) and checked again with fstat() on what was actually opened.
    Reading stops one byte past the cap, so a file that grows while being read cannot exhaust memory either.
    """
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise Unreadable(f"not a regular file ({_file_kind(st.st_mode)})")
        if st.st_size > limit:
            raise Unreadable(f"file too large ({st.st_size} bytes; the limit is {limit})")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise Unreadable(exc.strerror or str(exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Unreadable(f"not a regular file ({_file_kind(st.st_mode)})")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(4 * MiB, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise Unreadable(f"file too large (more than {limit} bytes)")
        return b"".join(chunks)
    except OSError as exc:
        raise Unreadable(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses nesting deeper than ``max_depth`` (checked before recursing)."""

    max_depth = DEFAULT_LIMITS.yaml_depth

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"nesting deeper than {self.max_depth} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def compose_bounded(text: str, max_depth: int = DEFAULT_LIMITS.yaml_depth) -> yaml.Node | None:
    """``yaml.compose`` with a nesting limit (raises a MarkedYAMLError at the node that goes too deep)."""
    loader = _BoundedLoader(text)
    loader.max_depth = max_depth
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def load_policy(paths: str | Path | Sequence[str | Path], *, limits: Limits = DEFAULT_LIMITS) -> Policy:
    """Load blocklist files or folders. Raises PolicyError listing every error; warnings land in ``.warnings``."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    problems: list[Problem] = []
    files = _expand_paths(paths, problems)
    builder = _Builder(problems)
    for f in files:
        parsed = _FileParser(f, problems, limits).parse()
        if parsed is not None:
            builder.add_file(*parsed)
    if not files and not problems:
        shown = ", ".join(str(p) for p in paths)
        problems.append(Problem(shown, 1, 1, "no blocklist files (*.yaml) found"))
    policy = builder.build(tuple(str(f) for f in files))
    if any(p.severity == "error" for p in problems):
        raise PolicyError(problems)
    return policy


def _expand_paths(paths: Iterable[str | Path], problems: list[Problem]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            # Not only regular files: a FIFO or a device named *.yaml is listed so that reading it reports it
            # (silently skipping it would hide a rule file). A dangling symlink (an editor's lock file) is skipped.
            found = sorted(x for x in p.iterdir() if x.suffix in (".yaml", ".yml") and x.exists() and not x.is_dir())
            if not found:
                problems.append(Problem(str(p), 1, 1, "folder has no blocklist files (*.yaml)"))
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            problems.append(Problem(str(p), 1, 1, "no such file or folder"))
    return files


# -- YAML node helpers --------------------------------------------------------------------------------------------


def _pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


@dataclass
class _Parsed:
    app: AppPolicy
    rules: list[tuple[Rule, Any]] = field(default_factory=list)  # (rule, payload)
    feeds: list[tuple[Rule, list[str], str]] = field(default_factory=list)  # include rule, names, feed digest
    app_pos: tuple[int, int] = (1, 1)


class _FileParser:
    def __init__(self, path: Path, problems: list[Problem], limits: Limits = DEFAULT_LIMITS) -> None:
        self.path = path
        self.shown = str(path)
        self.problems = problems
        self.limits = limits
        self.ok = True

    def error(self, node: yaml.Node | None, message: str) -> None:
        line, col = _pos(node) if node is not None else (1, 1)
        self.problems.append(Problem(self.shown, line, col, message))
        self.ok = False

    def warn(self, node: yaml.Node, message: str) -> None:
        line, col = _pos(node)
        self.problems.append(Problem(self.shown, line, col, message, "warning"))

    def parse(self) -> tuple[_Parsed, str] | None:
        try:
            text = read_regular(self.path, self.limits.yaml_bytes).decode("utf-8")
        except UnicodeDecodeError as exc:
            self.problems.append(Problem(self.shown, 1, 1, f"not UTF-8 text: {exc.reason}"))
            return None
        except Unreadable as exc:
            self.problems.append(Problem(self.shown, 1, 1, f"cannot read: {exc}"))
            return None
        try:
            root = compose_bounded(text, self.limits.yaml_depth)
        except RecursionError:  # belt and braces: the depth limit should make this unreachable
            self.problems.append(Problem(self.shown, 1, 1, "YAML syntax error: nesting too deep"))
            return None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            what = exc.problem or exc.context or "invalid YAML"
            if exc.problem and exc.context and exc.context_mark is not None and exc.context_mark is not mark:
                # "found unexpected end of stream" alone hides where the unclosed thing began.
                cm = exc.context_mark
                what += f" ({exc.context} at line {cm.line + 1}, column {cm.column + 1})"
            self.problems.append(Problem(self.shown, line, col, f"YAML syntax error: {what}"))
            return None
        except yaml.YAMLError as exc:
            self.problems.append(Problem(self.shown, 1, 1, f"YAML error: {exc}"))
            return None
        if root is None:
            self.problems.append(Problem(self.shown, 1, 1, "empty blocklist file"))
            return None
        top = self.mapping(root, "the top level", TOP_KEYS)
        if top is None:
            return None
        # A problem in 'app' or 'policy' does not stop here: the rules are still checked, so one `enforcer check`
        # run lists every problem of the file.
        app_node = top.get("app")
        app_id: str | None = None
        if app_node is None:
            self.error(root, "missing required key 'app'")
        else:
            app_id = self.scalar(app_node, "app")
            if app_id is not None and not APP_RE.fullmatch(app_id):
                self.error(app_node, f"app id must match [a-z0-9-]+, got {app_id!r}")
                app_id = None
        app = self.parse_policy(root, top, app_id or "invalid")
        if app is None or app_id is None:
            app_id = app_id or "invalid"
            app = AppPolicy(app_id, app_id, "", datetime(1970, 1, 1, tzinfo=UTC), "UTC", (), "", "", self.shown)
            self.ok = False
        parsed = _Parsed(app, app_pos=_pos(app_node if app_node is not None else root))
        for section in ("block", "allow"):
            node = top.get(section)
            if node is None:
                continue
            if not isinstance(node, yaml.SequenceNode):
                self.error(node, f"'{section}' must be a list of rules")
                continue
            for item in node.value:
                self.parse_rule(item, app_id, section, parsed)
        if "block" not in top and "allow" not in top:
            self.warn(root, "no rules: the file has neither 'block' nor 'allow'")
        if not self.ok:
            return None
        return parsed, app_id

    # -- typed accessors ------------------------------------------------------------------------------------
    def mapping(self, node: yaml.Node, what: str, allowed: set[str]) -> dict[str, yaml.Node] | None:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping")
            return None
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(key_node, f"keys in {what} must be plain strings")
                continue
            key = key_node.value
            if key in out:
                self.error(key_node, f"duplicate key '{key}' in {what}")
                continue
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                self.error(key_node, f"unknown key '{key}' in {what} (expected one of: {hint})")
                continue
            out[key] = value_node
        return out

    def scalar(self, node: yaml.Node, what: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            self.error(node, f"'{what}' must be a single value")
            return None
        value = str(node.value).strip()
        if not value:
            self.error(node, f"'{what}' must not be empty")
            return None
        return value

    def string_list(self, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node]] | None:
        if isinstance(node, yaml.ScalarNode):
            v = self.scalar(node, what)
            return None if v is None else [(v, node)]
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"'{what}' must be a value or a list of values")
            return None
        out: list[tuple[str, yaml.Node]] = []
        for item in node.value:
            v = self.scalar(item, what)
            if v is not None:
                out.append((v, item))
        return out

    # -- policy section -----------------------------------------------------------------------------------------
    def parse_policy(self, root: yaml.Node, top: dict[str, yaml.Node], app_id: str) -> AppPolicy | None:
        pol_node = top.get("policy")
        if pol_node is None:
            self.error(root, "missing required key 'policy' (with at least 'effective')")
            return None
        pol = self.mapping(pol_node, "'policy'", POLICY_KEYS)
        if pol is None:
            return None
        tz_name = "UTC"
        if "timezone" in pol:
            tz_name = self.scalar(pol["timezone"], "timezone") or "UTC"
        try:
            tz = ZoneInfo(tz_name)
        except (ZoneInfoNotFoundError, ValueError):
            self.error(pol["timezone"], f"unknown time zone {tz_name!r} (use an IANA name such as America/Toronto)")
            tz = ZoneInfo("UTC")
        eff_node = pol.get("effective")
        if eff_node is None:
            self.error(pol_node, "missing required key 'policy.effective' (a date such as 2023-10-30)")
            return None
        effective = self.parse_when(eff_node, tz)
        if effective is None:
            return None
        exempt: list[IPNetwork] = []
        if "exempt_clients" in pol:
            node = pol["exempt_clients"]
            items = (
                []
                if isinstance(node, yaml.SequenceNode) and not node.value
                else self.string_list(node, "exempt_clients")
            )
            for value, item in items or []:
                net = self.network(value, item)
                if net is not None:
                    exempt.append(net)
                    broad = lint.network_warning(net, "exempt_clients:")
                    if broad is not None:
                        self.warn(item, broad + ": the policy is not enforced for them")
        text = {k: (self.scalar(pol[k], k) or "") if k in pol else "" for k in ("notice", "reference")}
        name = self.scalar(top["name"], "name") if "name" in top else None
        vendor = self.scalar(top["vendor"], "vendor") if "vendor" in top else None
        return AppPolicy(
            app=app_id,
            name=name or app_id,
            vendor=vendor or "",
            effective=effective,
            timezone=tz_name,
            exempt_clients=tuple(exempt),
            notice=text["notice"],
            reference=text["reference"],
            path=self.shown,
        )

    def parse_when(self, node: yaml.Node, tz: ZoneInfo) -> datetime | None:
        raw = self.scalar(node, "effective")
        if raw is None:
            return None
        try:
            if len(raw) == 10:
                return datetime.combine(date.fromisoformat(raw), time(0), tzinfo=tz)
            when = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            self.error(node, f"'effective' must be a date (2023-10-30) or an RFC 3339 timestamp, got {raw!r}")
            return None
        return when if when.tzinfo is not None else when.replace(tzinfo=tz)

    def network(self, value: str, node: yaml.Node) -> IPNetwork | None:
        try:
            return ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            self.error(node, f"invalid CIDR {value!r}: {exc}")
            return None

    # -- rules ----------------------------------------------------------------------------------------------------
    def parse_rule(self, node: yaml.Node, app_id: str, section: str, parsed: _Parsed) -> None:
        fields = self.mapping(node, f"a '{section}' rule", set(RULE_KINDS) | RULE_EXTRA_KEYS)
        if fields is None:
            return
        kinds = [k for k in RULE_KINDS if k in fields]
        if len(kinds) != 1:
            found = ", ".join(kinds) if kinds else "none"
            self.error(node, f"a rule needs exactly one of {', '.join(RULE_KINDS)} (found: {found})")
            return
        kind = kinds[0]
        action = "block" if section == "block" else "allow"
        value_node = fields[kind]
        line, _ = _pos(node)
        source_ref = f"{self.shown}:{line}"
        category = None
        if "category" in fields:
            category = self.scalar(fields["category"], "category")
            if category is not None and category not in CATEGORIES:
                self.error(
                    fields["category"], f"unknown category {category!r} (expected one of: {', '.join(CATEGORIES)})"
                )
                return
        elif action == "block":
            self.error(node, f"block rule needs a 'category' ({'|'.join(CATEGORIES)})")
            return
        method = None
        if "method" in fields:
            method = (self.scalar(fields["method"], "method") or "").upper()
            if not METHOD_RE.fullmatch(method):
                self.error(fields["method"], f"'method' must be an HTTP method such as POST, got {method!r}")
                return
            if kind != "url":
                self.error(fields["method"], "'method' applies to url rules only")
                return
        comment = self.scalar(fields["comment"], "comment") if "comment" in fields else None
        if "source" in fields:
            self.scalar(fields["source"], "source")
        if kind == "store":
            self.parse_store(value_node, fields, app_id, action, category, source_ref, comment, parsed)
            return
        raw = self.scalar(value_node, kind)
        if raw is None:
            return
        payload: Any = None
        if kind in ("domain", "host"):
            try:
                value = normalize_name(raw)
            except InvalidName as exc:
                self.error(value_node, f"invalid {kind} {raw!r}: {exc}")
                return
        elif kind == "cidr":
            net = self.network(raw, value_node)
            if net is None:
                return
            value, payload = str(net), net
        elif kind == "url":
            value = raw
        else:  # include
            value = raw
        rid = self.rule_id(fields, app_id, action, kind, value)
        if rid is None:
            return
        rule = Rule(rid, app_id, action, kind, value, category, source_ref, method, comment)  # type: ignore[arg-type]
        if kind == "url":
            try:
                payload = [compile_url_rule(rule)]
            except InvalidPattern as exc:
                self.error(value_node, f"invalid url rule: {exc}")
                return
        if kind == "include":
            if action == "allow":
                self.error(value_node, "include feeds are block lists; write allow exceptions as domain/host rules")
                return
            names, digest = self.read_feed(raw, value_node)
            if names is None:
                return
            parsed.feeds.append((rule, names, digest))
        parsed.rules.append((rule, (payload, value_node)))

    def rule_id(self, fields: dict[str, yaml.Node], app_id: str, action: str, kind: str, value: str) -> str | None:
        if "id" in fields:
            return self.scalar(fields["id"], "id")
        return f"{app_id}:{kind}:{value}" if action == "block" else f"{app_id}:allow:{kind}:{value}"

    def parse_store(
        self,
        node: yaml.Node,
        fields: dict[str, yaml.Node],
        app_id: str,
        action: str,
        category: str | None,
        source_ref: str,
        comment: str | None,
        parsed: _Parsed,
    ) -> None:
        if action != "block":
            self.error(node, "store rules are block rules")
            return
        stores_map = self.mapping(node, "'store'", set(STORES))
        if stores_map is None:
            return
        if not stores_map:
            self.error(node, f"'store' needs at least one of: {', '.join(STORES)}")
            return
        stores: dict[str, tuple[str, ...]] = {}
        for store, snode in stores_map.items():
            values = self.string_list(snode, f"store.{store}") or []
            good = []
            for v, vnode in values:
                try:
                    check_store_id(store, v)
                except InvalidPattern as exc:
                    self.error(vnode, str(exc))
                    continue
                good.append(v)
            stores[store] = tuple(good)
        if not self.ok:
            return
        summary = ";".join(f"{k}={','.join(v)}" for k, v in sorted(stores.items()))
        rid = self.rule_id(fields, app_id, action, "store", summary)
        if rid is None:
            return
        rule = Rule(rid, app_id, "block", "store", summary, category, source_ref, None, comment)
        parsed.rules.append((rule, (compile_store_rule(rule, stores), node)))

    # -- include feeds ----------------------------------------------------------------------------------------------
    def read_feed(self, raw: str, node: yaml.Node) -> tuple[list[str] | None, str]:
        feed = (self.path.parent / raw).resolve() if not Path(raw).is_absolute() else Path(raw)
        shown = str(self.path.parent / raw) if not Path(raw).is_absolute() else raw
        folder = self.path.parent.resolve()
        if not feed.resolve().is_relative_to(folder):
            # Checked on the resolved path, so '..' and symlinks that lead out are caught alike; nothing of the
            # foreign file is read, so nothing of it can appear in a message, an export or the RPZ feed.
            self.error(node, f"include file {raw!r} is outside the blocklist folder {folder} (feeds must be in it)")
            return None, ""
        try:
            data = read_regular(feed, self.limits.feed_bytes)
        except Unreadable as exc:
            self.error(node, f"cannot read include file {raw!r}: {exc}")
            return None, ""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.error(node, f"include file {raw!r} is not UTF-8: {exc.reason}")
            return None, ""
        names: list[str] = []
        append = names.append
        fullmatch = _ASCII_NAME_RE.fullmatch
        errors = 0
        for lineno, line in enumerate(text.splitlines(), 1):
            # Fast path: a bare lower-case ASCII name, the shape of nearly every line of a large feed. A-labels
            # (xn--) take the slow path, which checks their punycode.
            if len(line) <= MAX_NAME and fullmatch(line) and "xn--" not in line:
                append(line)
                continue
            stripped = line.split("#", 1)[0].strip()
            if not stripped:
                continue
            tokens = stripped.split()
            first_col = line.find(tokens[0]) + 1
            if len(tokens) > 1 or _is_ip(tokens[0]):
                if not _is_ip(tokens[0]):
                    errors += 1
                    if errors <= MAX_FEED_ERRORS:
                        self.feed_error(shown, lineno, first_col, "expected one domain per line, or 'IP name ...'")
                    continue
                tokens = [t for t in tokens[1:] if t.lower() not in HOSTS_FILE_SKIP]
            for tok in tokens:
                try:
                    append(normalize_name(tok))
                except InvalidName as exc:
                    errors += 1
                    if errors <= MAX_FEED_ERRORS:
                        self.feed_error(shown, lineno, line.find(tok) + 1, f"invalid domain: {exc}")
        if errors > MAX_FEED_ERRORS:
            self.feed_error(shown, 1, 1, f"{errors - MAX_FEED_ERRORS} more invalid lines not shown")
        if errors:
            return None, ""
        if not names:
            self.warn(node, f"include file {raw!r} has no domains")
        for name in lint.public_feed_names(names):
            # Rare: find the line only for a flagged name, so the common case costs one set look-up per name.
            lineno, col = next(
                ((i, line.find(name) + 1) for i, line in enumerate(text.splitlines(), 1) if name in line.split()),
                (1, 1),
            )
            self.problems.append(
                Problem(
                    shown,
                    lineno,
                    col,
                    f"over-broad feed entry: {name} is a public suffix: this include blocks every name under it",
                    "warning",
                )
            )
        return names, hashlib.sha256("\n".join(names).encode()).hexdigest()

    def feed_error(self, shown: str, line: int, col: int, message: str) -> None:
        self.problems.append(Problem(shown, line, col, message))
        self.ok = False


def _is_ip(token: str) -> bool:
    try:
        ipaddress.ip_address(token)
    except ValueError:
        return False
    return True


# -- building the Policy ----------------------------------------------------------------------------------------


class _Builder:
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        self.apps: dict[str, AppPolicy] = {}
        self.app_pos: dict[str, str] = {}
        self.rules: list[Rule] = []
        self.hosts: dict[str, Rule] = {}
        self.domains: dict[str, Rule] = {}
        self.patterns: list[UrlPattern] = []
        self.cidrs: list[tuple[IPNetwork, Rule]] = []
        self.counts: dict[tuple[str, str], int] = {}
        self.positions: dict[int, tuple[str, int, int]] = {}  # id(rule) -> where, for warnings
        # The fingerprint hashes sorted rule lines, so reordering a file does not change it.
        self.digest_lines: list[str] = []
        self.ids: dict[str, Rule] = {}

    def warn_at(self, rule: Rule, message: str) -> None:
        path, line, col = self.positions.get(id(rule), (rule.source.rsplit(":", 1)[0], 1, 1))
        self.problems.append(Problem(path, line, col, message, "warning"))

    def add_file(self, parsed: _Parsed, app_id: str) -> None:
        app = parsed.app
        if app_id in self.apps:
            first = self.app_pos[app_id]
            line, col = parsed.app_pos
            self.problems.append(
                Problem(app.path, line, col, f"duplicate app id '{app_id}' (first defined at {first})")
            )
            return
        self.apps[app_id] = app
        self.app_pos[app_id] = f"{app.path}:{parsed.app_pos[0]}"
        self.digest_lines.append(
            f"app\0{app_id}\0{app.effective.isoformat()}\0{','.join(map(str, app.exempt_clients))}"
        )
        feeds = {id(rule): (names, digest) for rule, names, digest in parsed.feeds}
        for rule, (payload, node) in parsed.rules:
            self.positions[id(rule)] = (app.path, *_pos(node))
            if rule.id in self.ids:
                prior = self.ids[rule.id]
                line, col = _pos(node)
                if (prior.app, prior.action, prior.kind, prior.value) == (rule.app, rule.action, rule.kind, rule.value):
                    # The same rule written twice is a warning (an error under --strict); the prior one stays.
                    differs = (
                        f"; its category {rule.category} differs and is ignored"
                        if (prior.category != rule.category)
                        else ""
                    )
                    self.problems.append(
                        Problem(
                            app.path,
                            line,
                            col,
                            f"duplicate rule: {rule.kind} {rule.value} is already listed at {prior.source}{differs}",
                            "warning",
                        )
                    )
                    continue
                self.problems.append(
                    Problem(app.path, line, col, f"duplicate rule id '{rule.id}' (first at {prior.source})")
                )
                continue
            self.ids[rule.id] = rule
            self.rules.append(rule)
            self.digest_lines.append(
                f"{rule.app}\0{rule.action}\0{rule.kind}\0{rule.value}\0{rule.category}\0{rule.method}"
            )
            key = (rule.app, rule.kind)
            if rule.kind in ("domain", "host"):
                self.add_name(self.domains if rule.kind == "domain" else self.hosts, rule.value, rule)
                self.counts[key] = self.counts.get(key, 0) + 1
            elif rule.kind == "include":
                names, digest = feeds[id(rule)]
                self.digest_lines.append(f"feed\0{rule.id}\0{digest}")
                self.add_feed(names, rule)
                self.counts[key] = self.counts.get(key, 0) + len(names)
            elif rule.kind == "cidr":
                self.cidrs.append((payload, rule))
                self.counts[key] = self.counts.get(key, 0) + 1
            else:  # url, store
                self.patterns.extend(payload)
                self.counts[key] = self.counts.get(key, 0) + 1

    def add_name(self, table: dict[str, Rule], name: str, rule: Rule) -> None:
        old = table.get(name)
        if old is None:
            table[name] = rule
            return
        if old.action == rule.action:
            self.warn_at(rule, f"duplicate rule: {rule.kind} {name} is already listed at {old.source}")
            return
        # Same name, opposite actions: equal specificity, so allow wins.
        table[name] = rule if rule.action == "allow" else old

    def add_feed(self, names: list[str], rule: Rule) -> None:
        domains = self.domains
        dupes = 0
        for name in names:
            if name in domains:
                dupes += 1
                continue
            domains[name] = rule
        if dupes:
            self.warn_at(rule, f"{dupes} name(s) of include {rule.value} are listed more than once")

    def check_shadowing(self) -> None:
        """Warn about explicit rules that can never change a verdict or its attribution."""
        for table, is_host in ((self.hosts, True), (self.domains, False)):
            for name, rule in table.items():
                if rule.kind == "include":
                    continue
                covering = None
                for suffix in parents(name)[0 if is_host else 1 :]:
                    cand = self.domains.get(suffix)
                    if cand is not None and cand is not rule:
                        covering = cand
                        break
                if covering is None:
                    if rule.action == "allow":
                        self.warn_at(rule, f"allow rule for {name} has no effect: no block rule covers it")
                    continue
                if (
                    covering.action == rule.action
                    and covering.app == rule.app
                    and covering.category == rule.category
                    and covering.kind != "include"
                ):
                    self.warn_at(
                        rule,
                        f"shadowed rule: {rule.kind} {name} is already covered by {covering.id} at {covering.source}",
                    )
        block_cidrs = [(n, r) for n, r in self.cidrs if r.action == "block"]
        for net, rule in self.cidrs:
            for other, orule in block_cidrs:
                if orule is rule or other.version != net.version or other == net:
                    continue
                if net.subnet_of(other) and orule.app == rule.app and orule.category == rule.category:  # type: ignore[arg-type]
                    self.warn_at(rule, f"shadowed rule: cidr {net} is inside {other} ({orule.source})")
                    break

    def check_breadth(self) -> None:
        """Warn about rules that cover a public suffix, a huge address range or every URL (``lint``)."""
        for rule in self.rules:
            if rule.kind in ("domain", "host"):
                msg = lint.name_warning(rule.kind, rule.value, rule.action)
                if msg is not None:
                    self.warn_at(rule, msg)
        for net, rule in self.cidrs:
            msg = lint.network_warning(net, "rule: cidr")
            if msg is not None:
                self.warn_at(rule, msg)
        for pattern in self.patterns:
            if pattern.rule.kind == "url":
                msg = lint.url_warning(pattern)
                if msg is not None:
                    self.warn_at(pattern.rule, msg)

    def build(self, files: tuple[str, ...]) -> Policy:
        self.check_shadowing()
        self.check_breadth()
        warnings = tuple(p for p in self.problems if p.severity == "warning")
        return Policy(
            apps=self.apps,
            rules=tuple(self.rules),
            hosts=self.hosts,
            domains=self.domains,
            urls=UrlIndex(self.patterns),
            cidrs=self.cidrs,
            fingerprint=hashlib.sha256("\n".join(sorted(self.digest_lines)).encode()).hexdigest(),
            counts=self.counts,
            warnings=warnings,
            files=files,
        )
