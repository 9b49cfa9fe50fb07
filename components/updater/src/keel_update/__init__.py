"""Keel updater: atomic A/B /usr updates, rollback and reboot coordination."""
