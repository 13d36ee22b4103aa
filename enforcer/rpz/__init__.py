"""Response Policy Zones: the policy as RPZ records (``zone``) and served to BIND/Unbound fleets (``feed``)."""
