"""Keel supervisor: OCI containers with a real runtime, registered for discovery."""
