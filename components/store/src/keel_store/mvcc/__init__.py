"""The revisioned key space and the deterministic state machine over it (no I/O)."""
