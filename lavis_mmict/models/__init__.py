"""Registered models: ``mmict_blip2`` (and ``aim_opt`` in a later issue)."""
from lavis_mmict.models.mmict_blip2 import MMICTBlip2  # noqa: F401
