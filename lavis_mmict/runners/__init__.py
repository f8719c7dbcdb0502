"""The registered runners (``icl_runner_base``, ``icl_runner_iter``) and their parts.

- :mod:`.icl_runners`: the two registered classes, composing the mixins below.
- :mod:`.training_loop`: train / validate / test loop.
- :mod:`.checkpointing`: checkpoint save, resume and reload-best.
- :mod:`.loaders`: resumable samplers, epoch-aware loaders, seeds.
- :mod:`.skipped_media`: counting media that datasets with ``skip_bad_media`` dropped.
- :mod:`.media_check`: probing every used split's media before training (``run.check_media``).
- :mod:`.device`: device, DDP and grad scaler on CUDA or CPU.

What LAVIS 1.0.2's own runner gets wrong and how these handle it: ``docs/lavis-1.0.2-runner-notes.md``.
"""
from lavis_mmict.runners.icl_runners import IclRunnerBase, IclRunnerIter, IclRunnerMixin
from lavis_mmict.runners.loaders import (
    EpochAwareLoader,
    EvalLoader,
    ResumableDistributedSampler,
    chunk_seed,
    seed_everything,
)
from lavis_mmict.runners.skipped_media import SkippedMediaCounter

__all__ = [
    "EpochAwareLoader",
    "EvalLoader",
    "IclRunnerBase",
    "IclRunnerIter",
    "IclRunnerMixin",
    "ResumableDistributedSampler",
    "SkippedMediaCounter",
    "chunk_seed",
    "seed_everything",
]
