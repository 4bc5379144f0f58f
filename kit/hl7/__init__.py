"""kit.hl7."""
