"""Registered tasks (importing this package registers them in LAVIS's registry)."""
from lavis_mmict.tasks.icl_vqa import ICLVQATask, normalize_answer  # noqa: F401  (registers "icl_vqa")
from lavis_mmict.tasks.icl_captioning import ICLCaptionTask  # noqa: F401  (registers "icl_captioning")
from lavis_mmict.tasks.icl_classification import ICLClassificationTask  # noqa: F401  (registers "icl_classification")
