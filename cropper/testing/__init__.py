"""Helpers for tests: tiny random checkpoints built offline."""
