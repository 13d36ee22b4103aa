"""Parse and validate blocklist YAML files (and their ``include:`` feeds) into a frozen ``Policy``.

Every problem is reported with the file, line and column of the YAML node (or feed line) that caused it, and all
problems of all files are collected before failing, so one ``enforcer check`` run shows everything to fix.

Flow: ``load_policy(paths)`` -> ``_expand_paths`` -> per file ``_FileParser`` (YAML node tree -> AppPolicy + Rules,
feeds read as they are met and parsed by ``feeds.parse_feed``) -> ``build.PolicyBuilder`` (name/host tables, url
index, CIDRs, precedence, duplicate/shadow and over-broad warnings (``lint``), fingerprint) -> ``Policy``.

Every input is bounded (``bounded.Limits``): ``read_regular`` opens only regular files (a FIFO, a device or a symlink
to one is refused without blocking), reads at most the size cap, and ``compose_bounded`` stops YAML nesting at a fixed
depth. An include feed must live inside the folder of the file that includes it, so a blocklist edit cannot make the
loader read (and echo) a foreign file.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from . import lint
from .bounded import DEFAULT_LIMITS, Limits, MiB, Unreadable, compose_bounded, node_pos, read_regular
from .build import ParsedFile, PolicyBuilder
from .feeds import feed_names_text, url_include
from .matcher import Policy
from .model import (
    APP_KINDS,
    CATEGORIES,
    DNS_ACTIONS,
    AppKind,
    AppPolicy,
    IPNetwork,
    PolicyError,
    Problem,
    Rule,
    TextField,
    primary_tag,
)
from .nameindex import names_digest
from .names import InvalidName, normalize_name
from .nodes import NodeReader
from .urlrules import STORES, InvalidPattern, check_store_id, compile_store_rule, compile_url_rule

# Read by other modules from here (``enforcer/config.py``, the policy CLI and reloader); they live in bounded.py.
__all__ = ["DEFAULT_LIMITS", "Limits", "MiB", "Unreadable", "compose_bounded", "load_policy", "read_regular"]

APP_RE = re.compile(r"[a-z0-9-]+")
METHOD_RE = re.compile(r"[A-Z]{3,10}")
TOP_KEYS = {"app", "kind", "name", "vendor", "policy", "block", "allow"}
POLICY_KEYS = {"effective", "timezone", "exempt_clients", "notice", "reference"}
TEXT_FIELDS: tuple[TextField, ...] = ("notice", "reference")
LANG_RE = re.compile(r"[a-z]{2,3}")  # a BCP 47 primary language subtag, lower-cased
RULE_KINDS = ("domain", "host", "url", "cidr", "store", "include")
RULE_EXTRA_KEYS = {"category", "source", "id", "method", "comment", "dns_action"}
# dns_action applies where the resolver answers for the rule: names, and cidr rules (a forwarded answer holding such
# an address is replaced by the blocked answer). url and store rules act in the proxy only.
DNS_ACTION_KINDS = ("domain", "host", "include", "cidr")
# A control file may leave out policy.effective: bypass controls are enforced from the start.
CONTROL_EFFECTIVE = datetime(1970, 1, 1, tzinfo=UTC)
_REFUSED = object()  # a rule whose payload could not be built (the problem is already reported)


def load_policy(paths: str | Path | Sequence[str | Path], *, limits: Limits = DEFAULT_LIMITS) -> Policy:
    """Load blocklist files or folders. Raises PolicyError listing every error; warnings land in ``.warnings``."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    problems: list[Problem] = []
    files = _expand_paths(paths, problems)
    builder = PolicyBuilder(problems)
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


# PyYAML's (context, problem) texts -> a short message and which mark to show: the context's (where the unclosed
# thing began, e.g. the opening quote) or the problem's (where the parser gave up). The first entry that matches wins.
_YAML_MESSAGES: tuple[tuple[str, str, str, bool], ...] = (
    ("while scanning a quoted scalar", "", "unterminated quoted string", True),
    ("while parsing a flow sequence", "", "unclosed '[' (expected ',' or ']')", True),
    ("while parsing a flow mapping", "", "unclosed '{' (expected ',' or '}')", True),
    ("", "mapping values are not allowed here", "mapping values are not allowed here", False),
    ("", "expected <block end>", "bad indentation", False),
    (
        "",
        "that cannot start any token",
        "character that cannot start any YAML token (a tab? indent with spaces)",
        False,
    ),
    ("while scanning an alias", "", "undefined or malformed alias", False),
    ("", "found undefined alias", "undefined alias", False),
    ("while scanning a simple key", "could not find expected ':'", "a line without ':' inside a mapping", False),
)


def yaml_error_location(exc: yaml.MarkedYAMLError) -> tuple[int, int, str]:
    """(line, column, short message) for one PyYAML error, 1-based."""
    context, problem = exc.context or "", exc.problem or ""
    for ctx, prob, short, at_context in _YAML_MESSAGES:
        if (not ctx or context.startswith(ctx)) and (not prob or prob in problem):
            mark = (exc.context_mark if at_context else exc.problem_mark) or exc.problem_mark or exc.context_mark
            message = short
            break
    else:
        mark = exc.problem_mark or exc.context_mark
        message = problem or context or "invalid YAML"
        if problem and context and exc.context_mark is not None:
            # "found unexpected end of stream" alone hides where the unclosed thing began.
            cm = exc.context_mark
            message += f" ({context} at line {cm.line + 1}, column {cm.column + 1})"
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return line, col, message


# -- YAML node helpers --------------------------------------------------------------------------------------------


class _FileParser(NodeReader):
    def __init__(self, path: Path, problems: list[Problem], limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(str(path), problems)
        self.path = path
        self.limits = limits

    def parse(self) -> tuple[ParsedFile, str] | None:
        root = self.read_root()
        if root is None:
            return None
        top = self.mapping(root, "the top level", TOP_KEYS)
        if top is None:
            return None
        # A problem in 'app' or 'policy' does not stop here: the rules are still checked, so one `enforcer check`
        # run lists every problem of the file.
        app_node = top.get("app")
        app_id = self.app_id(root, app_node)
        kind = self.app_kind(top["kind"]) if "kind" in top else "ban"
        app = self.parse_policy(root, top, app_id or "invalid", kind or "ban")
        if app is None or app_id is None or kind is None:
            app_id = app_id or "invalid"
            app = AppPolicy(app_id, app_id, "", datetime(1970, 1, 1, tzinfo=UTC), "UTC", (), "", "", self.shown)
            self.ok = False
        parsed = ParsedFile(app, app_pos=node_pos(app_node if app_node is not None else root))
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

    def read_root(self) -> yaml.Node | None:
        """The file's YAML node tree; None (and one located problem) when it is unreadable, not YAML or empty."""
        try:
            text = read_regular(self.path, self.limits.yaml_bytes).decode("utf-8")
        except UnicodeDecodeError as exc:
            self.fail(f"not UTF-8 text: {exc.reason}")
            return None
        except Unreadable as exc:
            self.fail(f"cannot read: {exc}")
            return None
        try:
            root = compose_bounded(text, self.limits.yaml_depth)
        except RecursionError:  # belt and braces: the depth limit should make this unreachable
            self.fail("YAML syntax error: nesting too deep")
            return None
        except yaml.MarkedYAMLError as exc:
            line, col, what = yaml_error_location(exc)
            self.fail(f"YAML syntax error: {what}", line, col)
            return None
        except yaml.YAMLError as exc:
            self.fail(f"YAML error: {exc}")
            return None
        if root is None:
            self.fail("empty blocklist file")
            return None
        return root

    def fail(self, message: str, line: int = 1, col: int = 1) -> None:
        self.problems.append(Problem(self.shown, line, col, message))

    def app_id(self, root: yaml.Node, node: yaml.Node | None) -> str | None:
        if node is None:
            self.error(root, "missing required key 'app'")
            return None
        app_id = self.scalar(node, "app")
        if app_id is not None and not APP_RE.fullmatch(app_id):
            self.error(node, f"app id must match [a-z0-9-]+, got {app_id!r}")
            return None
        return app_id

    def app_kind(self, node: yaml.Node) -> AppKind | None:
        value = self.scalar(node, "kind")
        for kind in APP_KINDS:
            if value == kind:
                return kind
        if value is not None:
            self.error(node, f"'kind' must be one of: {', '.join(APP_KINDS)} (got {value!r})")
        return None

    # -- policy section -----------------------------------------------------------------------------------------
    def parse_policy(self, root: yaml.Node, top: dict[str, yaml.Node], app_id: str, kind: AppKind) -> AppPolicy | None:
        pol_node = top.get("policy")
        if pol_node is None and kind == "control":
            pol_node = yaml.MappingNode("tag:yaml.org,2002:map", [], root.start_mark, root.end_mark)
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
        if eff_node is None and kind == "ban":
            self.error(pol_node, "missing required key 'policy.effective' (a date such as 2023-10-30)")
            return None
        effective = CONTROL_EFFECTIVE if eff_node is None else self.parse_when(eff_node, tz)
        if effective is None:
            return None
        exempt = self.exempt_clients(pol["exempt_clients"]) if "exempt_clients" in pol else []
        text: dict[str, str] = {}
        translations: list[tuple[TextField, str, str]] = []
        for key in TEXT_FIELDS:
            plain, by_lang = self.localized_text(pol[key], key) if key in pol else ("", [])
            text[key] = plain
            translations.extend((key, tag, value) for tag, value in by_lang)
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
            translations=tuple(translations),
            kind=kind,
        )

    def localized_text(self, node: yaml.Node, key: TextField) -> tuple[str, list[tuple[str, str]]]:
        """``notice``/``reference``: a plain string, or a map from BCP 47 primary language tag to text
        (``{en: ..., fr: ...}``). Returns (the English or only text, [(tag, text), ...] in file order)."""
        if not isinstance(node, yaml.MappingNode):
            return self.scalar(node, f"policy.{key}") or "", []
        by_lang: list[tuple[str, str]] = []
        for key_node, value_node in node.value:
            # The raw text, not the resolved tag: YAML 1.1 reads a bare `no` (Norwegian) as a boolean.
            tag = key_node.value.strip().lower() if isinstance(key_node, yaml.ScalarNode) else ""
            if not LANG_RE.fullmatch(tag):
                shown = repr(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "a non-text key"
                hint = f" (use the primary tag {primary_tag(tag)!r})" if primary_tag(tag) else ""
                self.error(key_node, f"'policy.{key}': {shown} is not a BCP 47 primary language tag such as en{hint}")
                continue
            if any(t == tag for t, _ in by_lang):
                self.error(key_node, f"duplicate language {tag!r} in 'policy.{key}'")
                continue
            if not isinstance(value_node, yaml.ScalarNode) or value_node.tag != "tag:yaml.org,2002:str":
                self.error(value_node, f"'policy.{key}.{tag}' must be text (quote a number or yes/no)")
                continue
            value = self.scalar(value_node, f"policy.{key}.{tag}")
            if value is not None:
                by_lang.append((tag, value))
        if not by_lang:
            if not node.value:
                self.error(node, f"'policy.{key}' must be text or a map by language ({{en: ..., fr: ...}})")
            return "", []
        plain = next((v for t, v in by_lang if t == "en"), by_lang[0][1])
        return plain, by_lang

    def exempt_clients(self, node: yaml.Node) -> list[IPNetwork]:
        items = (
            [] if isinstance(node, yaml.SequenceNode) and not node.value else self.string_list(node, "exempt_clients")
        )
        exempt: list[IPNetwork] = []
        for value, item in items or []:
            net = self.network(value, item)
            if net is not None:
                exempt.append(net)
                broad = lint.network_warning(net, "exempt_clients:")
                if broad is not None:
                    self.warn(item, broad + ": the policy is not enforced for them")
        return exempt

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
    def parse_rule(self, node: yaml.Node, app_id: str, section: str, parsed: ParsedFile) -> None:
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
        extras = self.rule_extras(node, fields, kind, action)
        if extras is None:
            return
        category, method, comment, dns_action = extras
        value_node = fields[kind]
        source_ref = f"{self.shown}:{node_pos(node)[0]}"
        if kind == "store":
            self.parse_store(value_node, fields, app_id, action, category, source_ref, comment, parsed)
            return
        raw: str | None
        value: tuple[str, Any] | None
        if kind == "include" and isinstance(value_node, yaml.MappingNode):
            # A URL feed (feeds.url_include): the rule is named by its URL, the loader reads its local copy.
            url_local = url_include(self, value_node, self.path, self.limits.feed_bytes)
            raw, value = (None, None) if url_local is None else (url_local[1], (url_local[0], None))
        else:
            raw = self.scalar(value_node, kind)
            value = None if raw is None else self.rule_value(kind, raw, value_node)
        if raw is None or value is None:
            return
        rid = self.rule_id(fields, app_id, action, kind, value[0])
        if rid is None:
            return
        rule = Rule(rid, app_id, action, kind, value[0], category, source_ref, method, comment, dns_action)  # type: ignore[arg-type]
        payload = self.rule_payload(rule, raw, value_node, value[1], parsed)
        if payload is not _REFUSED:
            parsed.rules.append((rule, (payload, value_node)))

    def rule_extras(
        self, node: yaml.Node, fields: dict[str, yaml.Node], kind: str, action: str
    ) -> tuple[str | None, str | None, str | None, str | None] | None:
        """(category, method, comment, dns_action) of a rule; None after reporting a problem with one of them."""
        category = None
        if "category" in fields:
            category = self.scalar(fields["category"], "category")
            if category is not None and category not in CATEGORIES:
                self.error(
                    fields["category"], f"unknown category {category!r} (expected one of: {', '.join(CATEGORIES)})"
                )
                return None
        elif action == "block":
            self.error(node, f"block rule needs a 'category' ({'|'.join(CATEGORIES)})")
            return None
        method = None
        if "method" in fields:
            method = (self.scalar(fields["method"], "method") or "").upper()
            if not METHOD_RE.fullmatch(method):
                self.error(fields["method"], f"'method' must be an HTTP method such as POST, got {method!r}")
                return None
            if kind != "url":
                self.error(fields["method"], "'method' applies to url rules only")
                return None
        comment = self.scalar(fields["comment"], "comment") if "comment" in fields else None
        if "source" in fields:
            self.scalar(fields["source"], "source")
        dns_action = self.dns_action(fields["dns_action"], kind, action) if "dns_action" in fields else None
        if "dns_action" in fields and dns_action is None:
            return None
        return category, method, comment, dns_action

    def dns_action(self, node: yaml.Node, kind: str, action: str) -> str | None:
        """A block rule's ``dns_action`` (overrides the resolver's --mode for its names); None after a problem."""
        value = self.scalar(node, "dns_action")
        if value is None:
            return None
        value = value.lower()
        if value not in DNS_ACTIONS:
            self.error(node, f"'dns_action' must be one of: {', '.join(DNS_ACTIONS)} (got {value!r})")
            return None
        if action != "block":
            self.error(node, "'dns_action' applies to block rules only")
            return None
        if kind not in DNS_ACTION_KINDS:
            self.error(node, f"'dns_action' applies to {', '.join(DNS_ACTION_KINDS)} rules (not {kind}: proxy only)")
            return None
        return value

    def rule_value(self, kind: str, raw: str, node: yaml.Node) -> tuple[str, Any] | None:
        """(value as stored, payload) of a domain/host/cidr/url/include rule; None after reporting a bad value."""
        if kind in ("domain", "host"):
            try:
                return normalize_name(raw), None
            except InvalidName as exc:
                self.error(node, f"invalid {kind} {raw!r}: {exc}")
                return None
        if kind == "cidr":
            net = self.network(raw, node)
            return None if net is None else (str(net), net)
        return raw, None  # url, include

    def rule_payload(self, rule: Rule, raw: str, node: yaml.Node, payload: Any, parsed: ParsedFile) -> Any:
        """The compiled url pattern, or the include feed read (its names go to ``parsed.feeds``); ``_REFUSED``
        after reporting a problem."""
        if rule.kind == "url":
            try:
                return [compile_url_rule(rule)]
            except InvalidPattern as exc:
                self.error(node, f"invalid url rule: {exc}")
                return _REFUSED
        if rule.kind == "include":
            if rule.action == "allow":
                self.error(node, "include feeds are block lists; write allow exceptions as domain/host rules")
                return _REFUSED
            names, digest = self.read_feed(raw, node)
            if names is None:
                return _REFUSED
            parsed.feeds.append((rule, names, digest))
        return payload

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
        parsed: ParsedFile,
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
    def read_feed(self, raw: str, node: yaml.Node) -> tuple[str | None, str]:
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
        del data  # a large feed: one copy alive at a time (nameindex.py keeps the names as one string)
        names = feed_names_text(text, shown, self.problems)
        if names is None:
            self.ok = False
            return None, ""
        if not names:
            self.warn(node, f"include file {raw!r} has no domains")
        return names, names_digest(names)
