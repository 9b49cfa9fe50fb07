"""Keel provisioning: first-boot declarative configuration."""
