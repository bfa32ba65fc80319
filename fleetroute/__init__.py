"""fleetroute: a token-aware, KV-cache-aware router and replica agent for heterogeneous GPU fleets."""

__version__ = "0.1.0"
