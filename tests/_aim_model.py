"""The tiny aim_opt model (random tiny OPT, offline) built from its YAML, seeded, with config overrides."""
import os

import torch
from omegaconf import OmegaConf

from lavis_mmict.models.aim_opt import AIMOpt

CONFIG = "lavis_mmict/configs/models/aim_opt_tiny.yaml"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_cfg(**overrides):
    cfg = OmegaConf.load(os.path.join(ROOT, CONFIG)).model
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def build(seed=0, **overrides):
    torch.manual_seed(seed)
    return AIMOpt.from_config(tiny_cfg(**overrides))
