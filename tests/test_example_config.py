"""enforcer.example.yaml documents every key of every long-running command, and every active key is valid."""

from __future__ import annotations

import re

import pytest
import yaml

from enforcer.cli import build_parser
from enforcer.config import section_defaults
from tests.conftest import ROOT

EXAMPLE = ROOT / "enforcer.example.yaml"
COMMANDS = ("serve", "dns", "proxy", "analyst", "report")


def test_example_config_is_valid_for_every_section() -> None:
    text = EXAMPLE.read_text()
    data = yaml.safe_load(text)
    node = yaml.compose(text)
    _, subparsers = build_parser()
    assert set(data) == set(COMMANDS)
    for command in COMMANDS:
        # Raises ConfigError (FILE:LINE:COL) on an unknown key.
        section_defaults(subparsers[command], data, node, command, str(EXAMPLE))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_is_documented(command: str) -> None:
    text = EXAMPLE.read_text()
    section = text.split(f"\n{command}:\n", 1)[1].split("\n\n", 1)[0]
    keys = set(re.findall(r"^\s+#?\s?([a-z][a-z0-9-]*):", section, re.M))
    _, subparsers = build_parser()
    flags = {
        opt[2:]
        for action in subparsers[command]._actions
        for opt in action.option_strings
        if opt.startswith("--") and opt not in ("--help", "--config")
    }
    # --log-level is shown once, in serve's section.
    missing = sorted(flags - keys - ({"log-level"} if command != "serve" else set()))
    assert not missing, f"enforcer.example.yaml [{command}] does not document: {missing}"
