"""Settings: ``--config FILE`` (YAML, one section per subcommand, keys mirror the long flags) under command-line flags.

Precedence: flags beat config, config beats defaults. The config's section is applied as parser defaults before the
command line is parsed, which gives exactly that order. Repeatable flags use ``ReplaceAppend`` so that a flag given on
the command line replaces the config's list instead of adding to it.

Errors are ``FILE:LINE:COL: message`` lines (``ConfigError``), like blocklist errors.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml

import enforcer


class ConfigError(Exception):
    """Invalid configuration; the message is one or more ``FILE:LINE:COL: message`` lines."""


class ReplaceAppend(argparse.Action):
    """Like ``action="append"``, but the first use on the command line discards the default (or config) list."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        marker = f"_replaced_{self.dest}"
        if not getattr(namespace, marker, False):
            setattr(namespace, self.dest, [])
            setattr(namespace, marker, True)
        getattr(namespace, self.dest).append(values)


def find_config_arg(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def read_utf8(path: str | Path, limit: int, what: str) -> str:
    """A regular file of at most ``limit`` bytes as UTF-8 text (a leading BOM dropped), never blocking on a FIFO or
    a device; otherwise ``ConfigError`` ``PATH:LINE: cannot read WHAT: ...`` or ``PATH:LINE: WHAT is not UTF-8
    text ...``, the line the first undecodable byte is on (a CSV saved from a spreadsheet in a legacy code page)."""
    from .policy.bounded import Unreadable, read_regular

    try:
        data = read_regular(path, limit)
    except Unreadable as exc:
        raise ConfigError(f"{path}:1: cannot read {what}: {exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # exc.object, not data: after a BOM, utf-8-sig decodes (and counts exc.start in) the bytes that follow it.
        undecoded = bytes(exc.object)
        line = undecoded.count(b"\n", 0, exc.start) + 1
        utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")
        hint = "it is UTF-16: save it as UTF-8" if utf16 else f"byte 0x{undecoded[exc.start]:02x}: save it as UTF-8"
        raise ConfigError(f"{path}:{line}: {what} is not UTF-8 text ({hint})") from None


def load_config(path: str) -> tuple[dict[str, Any], yaml.Node | None]:
    """Parse the config file; returns the data and its node tree (for positions in error messages)."""
    # Bounded like a blocklist: a regular file only (a FIFO would hang), at most 1 MiB (a config is a few KB), and
    # nesting checked while composing, before safe_load recurses as deep as the file nests.
    from .policy.bounded import MiB, Unreadable, compose_bounded, read_regular

    try:
        text = read_regular(path, MiB).decode("utf-8")
    except Unreadable as exc:
        raise ConfigError(f"{path}:1:1: cannot read config: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}:1:1: cannot read config: not UTF-8 text: {exc.reason}") from None
    try:
        node = compose_bounded(text)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise ConfigError(f"{path}:{line}:{col}: YAML syntax error: {exc.problem}") from None
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1:1: the config must be a mapping of sections (dns:, proxy:, analyst:, ...)")
    return data, node


def _key_pos(root: yaml.Node | None, section: str, key: str | None) -> tuple[int, int]:
    if not isinstance(root, yaml.MappingNode):
        return 1, 1
    for k, v in root.value:
        if k.value == section:
            if key is None or not isinstance(v, yaml.MappingNode):
                return k.start_mark.line + 1, k.start_mark.column + 1
            for kk, _ in v.value:
                if kk.value == key:
                    return kk.start_mark.line + 1, kk.start_mark.column + 1
            return k.start_mark.line + 1, k.start_mark.column + 1
    return 1, 1


def option_dests(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Config key (long flag without dashes, '-' or '_') -> argparse action."""
    out: dict[str, argparse.Action] = {}
    for action in parser._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and opt not in ("--help", "--config"):
                name = opt[2:]
                out[name] = action
                out[name.replace("-", "_")] = action
    return out


def section_defaults(
    parser: argparse.ArgumentParser,
    config: dict[str, Any],
    node: yaml.Node | None,
    section: str,
    path: str,
    where: dict[str, tuple[str, str, Any]] | None = None,
) -> dict[str, Any]:
    """Validate ``config[section]`` against the parser's long flags; return ``{dest: value}`` defaults. ``where``
    receives, per long flag, (PATH:LINE:COL, section.key, value): for ``from_config``."""
    values = config.get(section)
    if values is None:
        return {}
    if not isinstance(values, dict):
        line, col = _key_pos(node, section, None)
        raise ConfigError(f"{path}:{line}:{col}: section '{section}' must be a mapping of option: value")
    known = option_dests(parser)
    defaults: dict[str, Any] = {}
    where = {} if where is None else where
    errors = []
    for key, value in values.items():
        action = known.get(str(key))
        if action is None:
            line, col = _key_pos(node, section, str(key))
            flags = sorted({_long_flag(a) for a in known.values()})
            errors.append(f"{path}:{line}:{col}: unknown key '{section}.{key}' (known: {', '.join(flags)})")
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) and not isinstance(value, bool):
            # A quoted "no" arrives as a string, which would read as true.
            line, col = _key_pos(node, section, str(key))
            errors.append(f"{path}:{line}:{col}: '{section}.{key}' must be true or false, got {value!r}")
            continue
        if isinstance(action, ReplaceAppend) and not isinstance(value, list):
            value = [value]
        if isinstance(value, list):
            value = [str(v) for v in value]
        elif value is not None and not isinstance(value, bool):
            value = str(value)
        # argparse checks choices only for values given on the command line, so check the config's here.
        if action.choices is not None and value is not None:
            allowed = {str(c) for c in action.choices}
            bad = [v for v in (value if isinstance(value, list) else [value]) if str(v) not in allowed]
            if bad:
                line, col = _key_pos(node, section, str(key))
                choices = ", ".join(str(c) for c in action.choices)
                errors.append(
                    f"{path}:{line}:{col}: invalid value {bad[0]!r} for '{section}.{key}' (choose from {choices})"
                )
                continue
        defaults[action.dest] = value
        line, col = _key_pos(node, section, str(key))
        where[_long_flag(action)] = (f"{path}:{line}:{col}", f"{section}.{key}", value)
    if errors:
        raise ConfigError("\n".join(errors))
    return defaults


def from_config(args: argparse.Namespace, message: str) -> str:
    """``message`` (a command's one-line refusal of ``--flag VALUE``) with where the value came from when it is the
    config file's: ``--timeout 'three': not a number`` named a flag the user never typed."""
    flag = message.split(" ", 1)[0].split("=", 1)[0]
    where = getattr(args, "_config_where", {}).get(flag[2:]) if flag.startswith("--") else None
    if where is None:
        return message
    pos, key, value = where
    if getattr(args, flag[2:].replace("-", "_"), None) != value:
        return message  # the command line's value, not the config's
    return f"{pos}: '{key}': {message.split(' ', 1)[1] if ' ' in message else message}"


def check_sections(config: dict[str, Any], node: yaml.Node | None, known: set[str], path: str) -> None:
    """Every top-level section must name a command: a typo (``dnss:``) would otherwise be ignored silently."""
    errors = []
    for section in config:
        if str(section) not in known:
            line, col = _key_pos(node, str(section), None)
            errors.append(f"{path}:{line}:{col}: unknown section '{section}' (known: {', '.join(sorted(known))})")
    if errors:
        raise ConfigError("\n".join(errors))


def _long_flag(action: argparse.Action) -> str:
    return next(o[2:] for o in action.option_strings if o.startswith("--"))


BLOCKLIST_HELP = "blocklist file or folder (repeatable; default: blocklists/)"


def add_blocklist_argument(parser: argparse.ArgumentParser, help: str = BLOCKLIST_HELP) -> None:
    """``--blocklist PATH``, repeatable, the first use replacing the default (``default_blocklist()``): one
    definition for every command that loads the policy."""
    parser.add_argument("--blocklist", action=ReplaceAppend, default=[default_blocklist()], metavar="PATH", help=help)


def default_blocklist() -> str:
    """``./blocklists`` when present, else the lists shipped beside the package (source checkout, editable install)."""
    local = Path("blocklists")
    if local.is_dir():
        return str(local)
    shipped = Path(enforcer.__file__).resolve().parent.parent / "blocklists"
    if shipped.is_dir():
        return str(shipped)
    return str(local)


_SIZE = re.compile(r"(\d{1,19})([KMGT]?)(?:I?B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str, minimum: int = 1) -> int:
    """A size flag (``65536``, ``64K``, ``512M``, ``4G``, ``1TiB``) in bytes; ValueError with one line otherwise.

    One reader for every size flag (the resolver's ``--cache-bytes``, the report's and analyst's
    ``--max-file-size``); at most 19 digits, so the value always fits the int64 it is compared with."""
    m = _SIZE.fullmatch(str(text).strip())
    if not m or int(m.group(1)) * _UNITS[m.group(2).upper()] < minimum:
        raise ValueError(f"invalid size {text!r} (e.g. 65536, 64M, 4G)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def parse_number(flag: str, value: Any, kind: type, low: float, high: float) -> Any:
    """A numeric setting (``kind`` int or float) within ``[low, high]``; ValueError naming the flag otherwise.

    One reader for the resolver's numeric settings, plain and encrypted listeners alike."""
    try:
        n = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{flag} {value!r}: not a number") from None
    if not low <= n <= high:
        raise ValueError(f"{flag} {value!r}: must be between {low} and {high}")
    return n
