"""kit.hub."""
