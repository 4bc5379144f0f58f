"""HTTP surfaces of the kit on FastAPI."""
