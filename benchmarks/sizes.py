"""Benchmark sizes as configurations (no code path of their own).

tiny   the package's tiny types (32 px, 0.4 M parameters, 4 frames per clip): per-call overheads dominate.
small  ``benchmarks/configs/mmict_blip2_small.yaml``: 224 px, ~11 M random parameters, 1 frame per clip, CPU.
real   ``benchmarks/configs/mmict_blip2_real.yaml``: BLIP-2 OPT-2.7B shapes, random weights, 4 frames, GPU.
"""
import os
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

import lavis_mmict  # noqa: F401  (registers the models)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Size:
    mmict_config: str  # mmict_blip2 YAML, relative to the repository root
    aim_config: str  # aim_opt YAML
    frames: int  # frames per clip in the synthetic batches
    llm_half: bool = False  # real BLIP-2 keeps its frozen LLM in fp16 (GPU only)


SIZES = {
    "tiny": Size("lavis_mmict/configs/models/mmict_blip2_tiny.yaml",
                 "lavis_mmict/configs/models/aim_opt_tiny.yaml", frames=4),
    "small": Size("benchmarks/configs/mmict_blip2_small.yaml", "benchmarks/configs/aim_opt_small.yaml", frames=1),
    "real": Size("benchmarks/configs/mmict_blip2_real.yaml", "benchmarks/configs/aim_opt_real.yaml", frames=4,
                 llm_half=True),
}


def model_config(size: str, arch: str = "mmict_blip2", **overrides):
    path = SIZES[size].mmict_config if arch == "mmict_blip2" else SIZES[size].aim_config
    cfg = OmegaConf.load(os.path.join(REPO_ROOT, path)).model
    if str(cfg.qformer_model).startswith("benchmarks/"):
        cfg.qformer_model = os.path.join(REPO_ROOT, cfg.qformer_model)
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def build_model(size: str, device="cpu", seed: int = 0, arch: str = "mmict_blip2", **overrides):
    """``mmict_blip2`` (training mode) or ``aim_opt`` (eval mode) of ``size`` on ``device``."""
    from lavis.common.registry import registry

    torch.manual_seed(seed)
    model = registry.get_model_class(arch).from_config(model_config(size, arch, **overrides))
    if SIZES[size].llm_half and torch.device(device).type == "cuda":
        llm = model.llm_model if arch == "mmict_blip2" else model.opt_model
        llm.half()
    model = model.to(device)
    return model.train() if arch == "mmict_blip2" else model.eval()


def image_size(model) -> int:
    size = model.visual_encoder.patch_embed.img_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
