"""kit.endoscopy."""
