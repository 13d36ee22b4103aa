"""mitmproxy sees the enforcer addon as one object whose hooks are the parts' own methods (enforcer/proxy/addon.py)."""

from __future__ import annotations

import pytest
from mitmproxy import hooks
from mitmproxy.addonmanager import traverse
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


def test_loaded_as_a_script_the_module_answers_every_hook_lookup_without_a_miss() -> None:
    # mitmproxy walks the script's module too; a missing module attribute costs an exception on Python 3.11.
    ns = load_script(str(ADDON_PATH))
    assert ns is not None
    objects = list(traverse([ns]))
    assert objects[0] is ns and len(objects) == 2 and isinstance(objects[1], ns.EnforcerAddon)
    for name in hooks.all_hooks:
        assert name in vars(ns) or hasattr(type(ns), name), name
        # Only the addon object answers a hook; the module's own attribute is None, which mitmproxy skips.
        answering = [o for o in objects if getattr(o, name, None)]
        assert answering == ([objects[1]] if name in objects[1].hooks else []), name
