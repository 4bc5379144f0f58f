"""kit.widgets."""
