"""Toy model and dataset builder for the runner and task tests (no MMICT model needed).

Registers ``_toy_linear_model`` (a frozen Linear, a trainable Linear head and a buffer; answers
"yes"/"no"; optional ``dropout``) and ``_toy_builder`` (random vectors labelled by a fixed linear
rule; datasets record their ``set_epoch`` calls). Import it in-process, or in a ``train.py``
subprocess with ``LAVIS_MMICT_EXTRA_IMPORTS=_toy_plugin`` and ``tests/`` on ``PYTHONPATH``.

Dataset ``build_info`` options for the resume and skipped-media tests:
    augment_noise        std of Gaussian noise added to training features in ``__getitem__``
                         (drawn from the global torch RNG, like LAVIS's random processors)
    skipped_media_every  n > 0: batches carry ``num_skipped_media`` = how many of their items have
                         ``index % n == 0`` (as a ``skip_bad_media`` dataset reports what it skipped)

Test hooks (environment variables, read at call time):
    TOY_PARAM_DUMP_DIR  each ``before_evaluation`` saves this rank's trainable parameters and the
                        registered output dir to ``<dir>/rank<r>_eval<n>.pt``.
    TOY_SKEW_JOB_ID     on non-zero ranks, make the local timestamp differ, to show that all
                        ranks still use rank 0's job id.
    TOY_FAIL_AT         ``rank:epoch:step``: that rank raises ``ToyFailure`` in that training step.
    TOY_STALL_AT        ``epoch:step:dir``: in that training step every rank writes its pid to
                        ``dir/rank<r>.pid`` and sleeps (a test kills the run there, mid-epoch).
    TOY_SEEN_KEYS_FILE  every training forward appends its batch's keys (one json list a line).
"""
import hashlib
import json
import os
import tempfile
import time

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
from lavis_mmict.config_schema import FLOAT, INT

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

    def __init__(self, num_items, first_question_id, seed, augment_noise=0.0, skipped_media_every=0):
        generator = torch.Generator().manual_seed(seed)
        self.features = torch.randn(num_items, NUM_FEATURES, generator=generator)
        self.answers = ["yes" if v > 0 else "no" for v in (self.features @ TRUE_WEIGHTS).tolist()]
        self.first_question_id = first_question_id
        self.augment_noise = float(augment_noise)
        self.skipped_media_every = int(skipped_media_every)
        self.epochs = []  # set_epoch calls, for tests

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __len__(self):
        return len(self.answers)

    def __getitem__(self, index):
        x = self.features[index]
        if self.augment_noise:
            x = x + self.augment_noise * torch.randn(NUM_FEATURES)
        return {
            "x": x,
            "index": index,
            "text_input": f"question {index}",
            "text_output": self.answers[index],
            "question_id": self.first_question_id + index,
            "question_type": "yes/no",
        }

    def collater(self, samples):
        batch = default_collate(samples)
        if self.skipped_media_every:
            batch["num_skipped_media"] = sum(
                1 for s in samples if s["index"] % self.skipped_media_every == 0
            )
        return batch


@registry.register_builder(BUILDER_NAME)
class ToyBuilder(BaseDatasetBuilder):
    DATASET_CONFIG_DICT = {"default": _DEFAULT_PATHS["dataset"]}
    # the keys it reads besides LAVIS's (train.py's config check: docs/configuration.md#your-own-classes)
    CONFIG_KEYS = {"build_info.num_train": INT, "build_info.num_val": INT, "build_info.num_test": INT,
                   "build_info.augment_noise": FLOAT, "build_info.skipped_media_every": INT}

    def _download_data(self):
        pass

    def build(self):
        info = self.config.build_info
        every = int(info.get("skipped_media_every", 0))
        noise = float(info.get("augment_noise", 0.0))
        return {
            "train": ToyQADataset(int(info.num_train), 0, seed=1, augment_noise=noise, skipped_media_every=every),
            "val": ToyQADataset(int(info.num_val), 10_000, seed=2, skipped_media_every=every),
            "test": ToyQADataset(int(info.num_test), 20_000, seed=3),
        }


@registry.register_model(MODEL_NAME)
class ToyLinearModel(BaseModel):
    PRETRAINED_MODEL_CONFIG_DICT = {"default": _DEFAULT_PATHS["model"]}
    CONFIG_KEYS = {"hidden": INT, "dropout": FLOAT}

    def __init__(self, hidden=8, dropout=0.0):
        super().__init__()
        self.frozen = nn.Linear(NUM_FEATURES, hidden)
        self.frozen.requires_grad_(False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, 1)
        self.register_buffer("scale", torch.ones(1))
        self._eval_calls = 0

    @classmethod
    def from_config(cls, cfg):
        return cls(hidden=int(cfg.get("hidden", 8)), dropout=float(cfg.get("dropout", 0.0)))

    def logits(self, samples):
        return self.head(self.dropout(self.frozen(samples["x"]))).squeeze(-1) * self.scale

    def forward(self, samples):
        _test_hooks(samples)
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


class ToyFailure(RuntimeError):
    """Raised by TOY_FAIL_AT."""


def _at_step(epoch, step, samples):
    return int(samples["epoch"]) == int(epoch) and int(samples["iters"]) == int(step)


def _test_hooks(samples):
    seen_file = os.environ.get("TOY_SEEN_KEYS_FILE")
    if seen_file:
        with open(seen_file, "a") as f:
            f.write(json.dumps(sorted(samples)) + "\n")
    fail_at = os.environ.get("TOY_FAIL_AT")
    if fail_at:
        rank, epoch, step = fail_at.split(":")
        if get_rank() == int(rank) and _at_step(epoch, step, samples):
            raise ToyFailure(f"toy failure on rank {rank} at epoch {epoch}, step {step}")
    stall_at = os.environ.get("TOY_STALL_AT")
    if stall_at:
        epoch, step, directory = stall_at.split(":", 2)
        if _at_step(epoch, step, samples):
            path = os.path.join(directory, f"rank{get_rank()}.pid")
            with open(path + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(path + ".tmp", path)
            time.sleep(600)


if os.environ.get("TOY_SKEW_JOB_ID") and os.environ.get("RANK", "0") != "0":
    _skew = "skewed-rank" + os.environ["RANK"]
    lavis_mmict.dist._timestamp = lambda: _skew
