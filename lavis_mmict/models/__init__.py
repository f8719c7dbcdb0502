"""Registered models: ``mmict_blip2`` and ``aim_opt``."""
from lavis_mmict.models.mmict_blip2 import MMICTBlip2  # noqa: F401
from lavis_mmict.models.aim_opt import AIMOpt  # noqa: F401
