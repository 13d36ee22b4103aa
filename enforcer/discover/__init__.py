"""Discovery (issue 17): what looks like a banned app but matched no rule. Proposals only, never applied.

- ``sources``: the inputs, bounded and time-filtered: hit events (files or folders of JSON Lines, rotated files
  included) and the resolver's sampled query log of allowed names (enforcer/dns/querylog.py).
- ``signals``: the three detectors, each returning ``Candidate``s with their evidence:
  ``resolved_into_policy`` (discovery events: a name whose forwarded answer led into a banned CIDR or name),
  ``co_occurrence`` (names a client asks for within seconds of a blocked query, rare among other clients) and
  ``app_domains`` (names and SNI values under a brand of the apps' own registrable domains, e.g. a new ccTLD).
- ``model``: ``Candidate`` and the merge of the same name found by several detectors (confidence rises).
- ``render``: YAML snippets to paste into a blocklist, each rule with ``source:`` naming the evidence and a
  ``# confidence`` comment; ``as_dict`` for JSON and the analyst's Candidates view.
- ``discover(...)``: everything above in one call; ``cli``: ``enforcer discover``.
"""

from __future__ import annotations

from .model import Candidate, discover

__all__ = ["Candidate", "discover"]
