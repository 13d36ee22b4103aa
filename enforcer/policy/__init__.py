"""The policy: blocklists parsed into one immutable ``Policy`` that the resolver and the proxy addon both ask.

No sockets, no clock, no globals: callers pass "now" and the client where a decision depends on them.
"""

from .blocklist import load_policy
from .matcher import Policy
from .model import CATEGORIES, KINDS, AppPolicy, Match, PolicyError, Problem, Rule
from .names import InvalidName, fast_key, normalize_name

__all__ = [
    "CATEGORIES",
    "KINDS",
    "AppPolicy",
    "InvalidName",
    "Match",
    "Policy",
    "PolicyError",
    "Problem",
    "Rule",
    "fast_key",
    "load_policy",
    "normalize_name",
]
