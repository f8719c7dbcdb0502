"""Filled in by the skeleton work."""
