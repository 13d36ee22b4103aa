"""Proxy test setup: import mitmproxy's addon package once with third-party DeprecationWarnings silenced.

mitmproxy imports ldap3, which uses pyasn1 names that pyasn1 now deprecates; under ``filterwarnings = error`` that
import would fail collection. The warning is neither ours nor mitmproxy's (pyproject could also ignore
``DeprecationWarning:ldap3.*``).
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import mitmproxy.addons
    import mitmproxy.test.taddons  # noqa: F401
