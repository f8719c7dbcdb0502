"""Imported by train.py in end-to-end tests (via LAVIS_MMICT_EXTRA_IMPORTS).

After ``runner.train()`` each rank saves its model's trainable parameters to
``$RANK_PARAM_DUMP_DIR/rank<r>.pt``, so a test can compare ranks after a real torchrun run.
"""
import os

import torch
from lavis.common.dist_utils import get_rank

from lavis_mmict.checkpoints import trainable_state_dict
from lavis_mmict.runners import IclRunnerMixin


def _dump_after(train):
    def train_then_dump(self):
        result = train(self)
        dump_dir = os.environ["RANK_PARAM_DUMP_DIR"]
        os.makedirs(dump_dir, exist_ok=True)
        model = self.unwrap_dist_model(self.model)
        torch.save(trainable_state_dict(model), os.path.join(dump_dir, f"rank{get_rank()}.pt"))
        return result

    return train_then_dump


for runner_cls in IclRunnerMixin.__subclasses__():
    runner_cls.train = _dump_after(runner_cls.train)
