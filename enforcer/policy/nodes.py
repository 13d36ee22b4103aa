"""Typed access to a YAML node tree, every problem located at its node (``PATH:LINE:COL``).

- ``NodeReader(shown, problems)``: ``error``/``warn`` at a node (an error clears ``ok``), ``mapping`` (plain string
  keys, no duplicates, only the allowed ones), ``scalar`` (one non-empty value), ``string_list`` (a value or a
  list of values). The blocklist parser (``blocklist._FileParser``) is one.
"""

from __future__ import annotations

import yaml

from .bounded import node_pos
from .model import Problem


class NodeReader:
    def __init__(self, shown: str, problems: list[Problem]) -> None:
        self.shown = shown
        self.problems = problems
        self.ok = True

    def error(self, node: yaml.Node | None, message: str) -> None:
        line, col = node_pos(node) if node is not None else (1, 1)
        self.problems.append(Problem(self.shown, line, col, message))
        self.ok = False

    def warn(self, node: yaml.Node, message: str) -> None:
        line, col = node_pos(node)
        self.problems.append(Problem(self.shown, line, col, message, "warning"))

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
