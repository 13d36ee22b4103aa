"""The mitmdump that ``enforcer proxy`` runs: ``python -m enforcer.proxy.launch MITMDUMP_ARGS``.

mitmproxy's own mitmdump (its argument parser, options, ``DumpMaster`` and run loop: ``mitmproxy.tools.main.run``)
with the enforcer addon registered on the master itself, at the place in the addon chain where ``-s addon.py`` puts
it (right after mitmproxy's script loader), instead of as a script.

Why: mitmproxy walks every registered object for every event. A script adds three to each walk (the script, its
module, the addon), and that walk was the whole of the addon's cost on the proxy: under callgrind, a script whose
hooks do nothing costs +2.2 % instructions a request over bare mitmdump, the enforcer addon as a script the same
(docs/performance.md, "The proxy addon, fifth pass"). Registered directly, the addon adds one object.

Everything else is what ``mitmdump`` does: any mitmdump argument works here (``-s`` for more scripts, ``--set``,
``--mode``), the exit status is mitmdump's. ``mitmdump -s enforcer/proxy/addon.py`` keeps working for an operator's
own mitmproxy (``enforcer proxy --addon-path``); the addon behaves the same both ways.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from mitmproxy import options
from mitmproxy.addons.script import ScriptLoader
from mitmproxy.tools import cmdline
from mitmproxy.tools.dump import DumpMaster
from mitmproxy.tools.main import run


class EnforcerDumpMaster(DumpMaster):
    """``DumpMaster`` with the enforcer addon (``enforcer.proxy.addon.addons``) after the script loader."""

    def __init__(self, opts: options.Options, **kwargs: Any) -> None:
        super().__init__(opts, **kwargs)
        from enforcer.proxy import addon

        # Registered before mitmdump applies its --set: ``load`` declares the enforcer_* options.
        self.addons.add(*addon.addons)  # type: ignore[no-untyped-call]
        chain = self.addons.chain
        for a in addon.addons:
            chain.remove(a)
        # Where a script's hooks run: after mitmproxy's proxy server, proxyauth (the user of an event) and DNS
        # resolver, before the addons that rewrite or replay flows.
        at = next(i for i, a in enumerate(chain) if isinstance(a, ScriptLoader)) + 1
        chain[at:at] = addon.addons


def _extra(args: Any) -> dict[str, Any]:
    """mitmdump's own handling of a filter expression on the command line (``mitmproxy.tools.main.mitmdump``)."""
    if args.filter_args:
        v = " ".join(args.filter_args)
        return {"save_stream_filter": v, "readfile_filter": v, "dumper_filter": v}
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    """Run until mitmproxy stops; a start-up error exits 1 from inside mitmproxy (its ErrorCheck), as mitmdump."""
    run(EnforcerDumpMaster, cmdline.mitmdump, sys.argv[1:] if argv is None else list(argv), _extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
