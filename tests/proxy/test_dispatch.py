"""mitmproxy sees the enforcer addon as one object whose hooks are the parts' own methods (enforcer/proxy/addon.py)."""

from __future__ import annotations

from typing import Any

import pytest
from mitmproxy import hooks
from mitmproxy.addonmanager import AddonManager, traverse
from mitmproxy.addons.script import load_script

from enforcer.proxy.addon import EnforcerAddon, bind_hooks
from enforcer.proxy.cli import ADDON_PATH
from tests.conftest import BLOCKLISTS
from tests.proxy.helpers import harness


def test_one_object_carries_every_hook_of_every_part() -> None:
    a = EnforcerAddon()
    assert list(traverse([a])) == [a]  # nothing nested: mitmproxy's per-event walk visits one object
    defined = {
        (name, part)
        for part in a.parts
        for name in dir(type(part))
        if name in hooks.all_hooks and callable(getattr(type(part), name))
    }
    assert {name for name, _ in defined} == set(a.hooks)
    for name, part in defined:
        bound = getattr(a, name)
        # The part's own method, not a relay: the same function on the same part object.
        assert bound.__self__ is part and bound.__func__ is getattr(type(part), name), name
    # Hooks of every layer are there (a part whose hooks went missing would silently fail open).
    assert {"http_connect", "tls_clienthello", "server_connect", "requestheaders", "dns_request", "configure"} <= set(
        a.hooks
    )


def test_a_hook_defined_by_two_parts_is_refused() -> None:
    class One:
        def requestheaders(self, flow: object) -> None: ...

    class Two:
        def requestheaders(self, flow: object) -> None: ...

    with pytest.raises(TypeError, match="requestheaders"):
        bind_hooks(object.__new__(EnforcerAddon), [One(), Two()])


def test_mitmproxy_registers_one_addon_and_runs_the_parts_hooks() -> None:
    a = EnforcerAddon()
    with harness(a) as tctx:
        names = [getattr(x, "name", type(x).__name__) for x in traverse(tctx.master.addons.chain)]
        assert names.count("enforcer") == 1 and not any(n.startswith("enforcer_") for n in names)
        assert tctx.master.addons.get("enforcer") is a
        # load and configure reached the lifecycle part through the bound hooks: its options exist and apply.
        tctx.configure(a, enforcer_blocklist=str(BLOCKLISTS), enforcer_passthrough=False)
        assert a.runtime.passthrough is False
        assert a.runtime.holder is not None and "wechat" in a.policy().apps
    a.done()


def test_loaded_as_a_script_the_module_is_the_one_object_and_answers_every_hook_lookup() -> None:
    # mitmproxy walks the script loader, the script and its module for every event: the module is the addon (nothing
    # nested under it, one level less to walk), and every name the walk asks for is a module attribute (a missing one
    # costs an exception on Python 3.11): ``addons``, and each hook: the part's own method, or None (skipped).
    ns = load_script(str(ADDON_PATH))
    assert ns is not None
    assert list(traverse([ns])) == [ns] and ns.addons == []  # asked for by every walk: present, and empty
    assert ns.name == "enforcer" and isinstance(ns.ADDON, ns.EnforcerAddon)
    assert "add_log" not in vars(ns)  # mitmproxy warns at start about an addon that has the deprecated event
    for name in hooks.all_hooks:
        if name == "add_log":
            continue
        assert name in vars(ns), name
        if name in ns.ADDON.hooks:
            assert getattr(ns, name) == getattr(ns.ADDON, name), name  # the same part method, bound to the same part
        else:
            assert getattr(ns, name) is None, name
    assert {"http_connect", "tls_clienthello", "server_connect", "requestheaders", "dns_request", "configure"} <= {
        name for name in hooks.all_hooks if getattr(ns, name, None)
    }


def test_mitmproxy_registers_the_script_module_as_enforcer_and_configures_it() -> None:
    ns = load_script(str(ADDON_PATH))
    assert ns is not None
    with harness(ns) as tctx:
        names = [getattr(x, "name", type(x).__name__) for x in traverse(tctx.master.addons.chain)]
        assert names.count("enforcer") == 1 and tctx.master.addons.get("enforcer") is ns
        # load and configure reached the lifecycle part through the module's hooks: its options exist and apply.
        tctx.configure(ns, enforcer_blocklist=str(BLOCKLISTS), enforcer_passthrough=False)
        assert ns.ADDON.runtime.passthrough is False
        assert ns.ADDON.runtime.holder is not None and "wechat" in ns.ADDON.policy().apps
    ns.done()


def test_under_mitmdump_the_addon_adds_one_short_walk_per_event() -> None:
    # Real mitmdump processes (bare, and as ``enforcer proxy`` starts it), keep-alive HTTPS through them to a local
    # origin, every Python call of the window counted (bench/proxy_calls.py). For each event (and the ``update`` after
    # it) mitmproxy walks every addon: the addon adds the script, its module and its empty ``addons``. Measured: seven
    # resumptions of mitmproxy's ``traverse`` a walk and 2.25 more getattr (an addon object nested under the module
    # made it 11 and 3.25).
    from bench import proxy_calls

    n = 60
    args = proxy_calls.parse_args(["--variants", "bare,addon", "--requests", str(n), "--warmup", "20"])
    args.connections = 4
    calls = proxy_calls.run(args)

    def per_request(variant: str, part: str, suffix: str) -> float:
        return sum(v for k, v in calls[variant].items() if part in k and k.endswith(suffix)) / n

    def extra(part: str, suffix: str) -> float:
        return per_request("addon", part, suffix) - per_request("bare", part, suffix)

    walks = per_request("bare", "", _counted_as(AddonManager.trigger_event))
    assert walks >= 8  # four events a keep-alive request, each followed by an update
    assert 4 * walks <= extra("", _counted_as(traverse)) <= 7 * walks + 1
    assert extra("", "C:getattr") <= 2.5 * walks
    # ... and the addon's own hook ran: it judged every request (the one hook of a request on a kept connection).
    assert per_request("addon", "enforcer/proxy/request.py:", ":requestheaders") == 1


def _counted_as(fn: Any) -> str:
    """The end of the key bench/proxy_calls.py counts a mitmproxy function under (file:first line:name)."""
    code = fn.__code__
    return f"mitmproxy/addonmanager.py:{code.co_firstlineno}:{code.co_name}"
