"""Toy model and dataset builder for the runner and task tests (no MMICT model needed).

Registers ``_toy_linear_model`` (a frozen Linear, a trainable Linear head and a buffer; answers
"yes"/"no") and ``_toy_builder`` (random vectors labelled by a fixed linear rule; datasets record
their ``set_epoch`` calls). Import it in-process, or in a ``train.py`` subprocess with
``LAVIS_MMICT_EXTRA_IMPORTS=_toy_plugin`` and ``tests/`` on ``PYTHONPATH``.

Test hooks (environment variables, read at call time):
    TOY_PARAM_DUMP_DIR  each ``before_evaluation`` saves this rank's trainable parameters and the
                        registered output dir to ``<dir>/rank<r>_eval<n>.pt``.
    TOY_SKEW_JOB_ID     on non-zero ranks, make the local timestamp differ, to show that all
                        ranks still use rank 0's job id.
"""
import hashlib
import os
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F
from lavis.common.dist_utils import get_rank
from lavis.common.registry import registry
from lavis.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from lavis.models.base_model import BaseModel
from torch.utils.data import Dataset
from torch.utils.data.dataloader import default_collate

import lavis_mmict.dist

MODEL_NAME = "_toy_linear_model"
BUILDER_NAME = "_toy_builder"
NUM_FEATURES = 4
TRUE_WEIGHTS = torch.tensor([1.0, -1.0, 0.5, 2.0])

_MODEL_DEFAULTS = f"""\
model:
  arch: {MODEL_NAME}
  model_type: default
  hidden: 8
"""
_DATASET_DEFAULTS = f"""\
datasets:
  {BUILDER_NAME}:
    data_type: images
    build_info:
      num_train: 32
      num_val: 12
      num_test: 10
"""


def _write_defaults():
    """LAVIS reads default configs from files: one shared folder per content, written atomically
    (several ranks may import this module at once)."""
    digest = hashlib.sha1((_MODEL_DEFAULTS + _DATASET_DEFAULTS).encode()).hexdigest()[:12]
    directory = os.path.join(tempfile.gettempdir(), f"lavis_mmict_toy_configs_{digest}")
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for name, text in (("model", _MODEL_DEFAULTS), ("dataset", _DATASET_DEFAULTS)):
        paths[name] = os.path.join(directory, f"{name}.yaml")
        if not os.path.isfile(paths[name]):
            tmp_path = f"{paths[name]}.{os.getpid()}.tmp"
            with open(tmp_path, "w") as f:
                f.write(text)
            os.replace(tmp_path, paths[name])
    return paths


_DEFAULT_PATHS = _write_defaults()


class ToyQADataset(Dataset):
    """``n`` random vectors; the answer is "yes" when ``x @ TRUE_WEIGHTS > 0``."""

    def __init__(self, num_items, first_question_id, seed):
        generator = torch.Generator().manual_seed(seed)
        self.features = torch.randn(num_items, NUM_FEATURES, generator=generator)
        self.answers = ["yes" if v > 0 else "no" for v in (self.features @ TRUE_WEIGHTS).tolist()]
        self.first_question_id = first_question_id
        self.epochs = []  # set_epoch calls, for tests

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __len__(self):
        return len(self.answers)

    def __getitem__(self, index):
        return {
            "x": self.features[index],
            "text_input": f"question {index}",
            "text_output": self.answers[index],
            "question_id": self.first_question_id + index,
            "question_type": "yes/no",
        }

    def collater(self, samples):
        return default_collate(samples)


@registry.register_builder(BUILDER_NAME)
class ToyBuilder(BaseDatasetBuilder):
    DATASET_CONFIG_DICT = {"default": _DEFAULT_PATHS["dataset"]}

    def _download_data(self):
        pass

    def build(self):
        info = self.config.build_info
        return {
            "train": ToyQADataset(int(info.num_train), 0, seed=1),
            "val": ToyQADataset(int(info.num_val), 10_000, seed=2),
            "test": ToyQADataset(int(info.num_test), 20_000, seed=3),
        }


@registry.register_model(MODEL_NAME)
class ToyLinearModel(BaseModel):
    PRETRAINED_MODEL_CONFIG_DICT = {"default": _DEFAULT_PATHS["model"]}

    def __init__(self, hidden=8):
        super().__init__()
        self.frozen = nn.Linear(NUM_FEATURES, hidden)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(hidden, 1)
        self.register_buffer("scale", torch.ones(1))
        self._eval_calls = 0

    @classmethod
    def from_config(cls, cfg):
        return cls(hidden=int(cfg.get("hidden", 8)))

    def logits(self, samples):
        return self.head(self.frozen(samples["x"])).squeeze(-1) * self.scale

    def forward(self, samples):
        targets = torch.tensor(
            [1.0 if a == "yes" else 0.0 for a in samples["text_output"]], device=samples["x"].device
        )
        return {"loss": F.binary_cross_entropy_with_logits(self.logits(samples), targets)}

    @torch.no_grad()
    def predict_answers(self, samples, **kwargs):
        return ["yes" if v > 0 else "no" for v in self.logits(samples).tolist()]

    def before_evaluation(self, dataset=None, task_type=None, **kwargs):
        dump_dir = os.environ.get("TOY_PARAM_DUMP_DIR")
        if dump_dir:
            trainable = {n: p.detach().cpu().clone() for n, p in self.named_parameters() if p.requires_grad}
            torch.save(
                {"params": trainable, "output_dir": registry.get_path("output_dir")},
                os.path.join(dump_dir, f"rank{get_rank()}_eval{self._eval_calls}.pt"),
            )
        self._eval_calls += 1


if os.environ.get("TOY_SKEW_JOB_ID") and os.environ.get("RANK", "0") != "0":
    _skew = "skewed-rank" + os.environ["RANK"]
    lavis_mmict.dist._timestamp = lambda: _skew
