"""kit.results."""
