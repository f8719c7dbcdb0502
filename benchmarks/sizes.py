"""Benchmark sizes as configurations (no code path of their own).

tiny   the package's tiny types (32 px, 0.4 M parameters, 4 frames per clip): per-call overheads dominate.
small  ``benchmarks/configs/mmict_blip2_small.yaml``: 224 px, ~11 M random parameters, 1 frame per clip, CPU.
real   ``benchmarks/configs/mmict_blip2_real.yaml``: BLIP-2 OPT-2.7B shapes, random weights, 4 frames, GPU
       (ViT and LLM in fp16 there, as runs with BLIP-2's weights hold them: ``run_precision``).
"""
import contextlib
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


SIZES = {
    "tiny": Size("lavis_mmict/configs/models/mmict_blip2_tiny.yaml",
                 "lavis_mmict/configs/models/aim_opt_tiny.yaml", frames=4),
    "small": Size("benchmarks/configs/mmict_blip2_small.yaml", "benchmarks/configs/aim_opt_small.yaml", frames=1),
    "real": Size("benchmarks/configs/mmict_blip2_real.yaml", "benchmarks/configs/aim_opt_real.yaml", frames=4),
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
    return build_from_config(model_config(size, arch, **overrides), device, seed)


def build_from_config(cfg, device="cpu", seed: int = 0):
    """The model of a ``model:`` config with random weights on ``device``, in a run's precision
    there (``run_precision``); training mode for ``mmict_blip2``, eval mode for ``aim_opt``. On a
    GPU the tensors are created there (initialising billions of weights on a CPU takes minutes)."""
    from lavis.common.registry import registry

    torch.manual_seed(seed)
    on_gpu = torch.device(device).type == "cuda"
    with torch.device(device) if on_gpu else contextlib.nullcontext():
        model = registry.get_model_class(cfg.arch).from_config(cfg)
    model = run_precision(model.to(device), cfg, device)
    return model.train() if cfg.arch == "mmict_blip2" else model.eval()


def run_precision(model, cfg, device):
    """On a GPU, hold the weights as a run with pretrained weights does: the ViT in fp16 when
    ``vit_precision: fp16`` (LAVIS converts only loaded weights) and the LLM in ``llm_dtype``
    (OPT fp16, FlanT5 bf16). CPU runs stay fp32."""
    if torch.device(device).type != "cuda":
        return model
    from lavis.models.eva_vit import convert_weights_to_fp16

    if cfg.get("vit_precision", "fp16") == "fp16":
        convert_weights_to_fp16(model.visual_encoder)
    model.llm_model.to(getattr(torch, cfg.get("llm_dtype", "float16")))
    return model


def image_size(model) -> int:
    size = model.visual_encoder.patch_embed.img_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
