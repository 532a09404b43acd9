"""The fault scenarios `make chaos` runs against the local stack (scenarios), and the hostile listings they and the
tests send (poison)."""
