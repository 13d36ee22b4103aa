"""enforcer: network-level enforcement of app bans (DNS resolver, mitmproxy addon, compliance review)."""

__version__ = "0.1.0"
