"""Fixtures for the analyst tests (helpers and the independent counts live in analyst_helpers.py)."""

from tests.analyst.analyst_helpers import inventory_file, policy

__all__ = ["inventory_file", "policy"]
