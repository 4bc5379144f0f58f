"""kit.fhir."""
