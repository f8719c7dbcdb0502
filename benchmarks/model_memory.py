"""Parameters and weight memory of every real model type, counted from its config without any
weights: the model is built on the meta device (no memory, no download) with the LLM's published
shape in place of its Hugging Face name, EVA ViT-g, and a BERT-base Q-Former, all randomly
initialised. ``python -m benchmarks.model_memory`` prints the table of docs/memory.md.

The same real-shape configs serve ``benchmarks/gpu_check.py`` (built on a GPU instead of meta).
"""
import contextlib
import os
import sys

import torch
from omegaconf import OmegaConf

from benchmarks.sizes import REPO_ROOT

# The published shapes of the LLMs the real model types name (their config.json on the Hugging
# Face hub), applied to the tiny asset of the same family, whose tokenizer stands in.
LLM_SHAPES = {
    "facebook/opt-2.7b": ("assets/tiny_opt", dict(hidden_size=2560, word_embed_proj_dim=2560, num_hidden_layers=32,
                                                  ffn_dim=10240, num_attention_heads=32, vocab_size=50272,
                                                  max_position_embeddings=2048)),
    "facebook/opt-6.7b": ("assets/tiny_opt", dict(hidden_size=4096, word_embed_proj_dim=4096, num_hidden_layers=32,
                                                  ffn_dim=16384, num_attention_heads=32, vocab_size=50272,
                                                  max_position_embeddings=2048)),
    "google/flan-t5-xl": ("assets/tiny_t5", dict(d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24,
                                                 num_heads=32, vocab_size=32128)),
    "google/flan-t5-xxl": ("assets/tiny_t5", dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                                  num_decoder_layers=24, num_heads=64, vocab_size=32128)),
}
# One pretrain type per backbone (the fine-tuned types have the same shapes).
MODEL_TYPES = [("mmict_blip2", "pretrain_opt2.7b"), ("mmict_blip2", "pretrain_opt6.7b"),
               ("mmict_blip2", "pretrain_flant5xl"), ("mmict_blip2", "pretrain_flant5xxl"),
               ("aim_opt", "pretrain_opt2.7b"), ("aim_opt", "pretrain_opt6.7b")]
BYTES = {"fp16": 2, "float16": 2, "bfloat16": 2, "fp32": 4, "float32": 4}


def real_shape_config(arch, model_type, **overrides):
    """The ``model:`` config of a registered real type with random weights at the same shapes."""
    from lavis.common.registry import registry

    cfg = OmegaConf.load(registry.get_model_class(arch).default_config_path(model_type)).model
    asset, shape = LLM_SHAPES[cfg.llm_model]
    cfg.llm_model = asset
    cfg.llm_config_overrides = {**dict(cfg.get("llm_config_overrides", None) or {}), **shape}
    cfg.vit_init = cfg.qformer_init = cfg.llm_init = "random"
    cfg.qformer_model = os.path.join(REPO_ROOT, "benchmarks", "assets", "qformer_base")  # BERT-base shapes
    cfg.pretrained, cfg.finetuned, cfg.load_finetuned = "", "", False
    cfg.qformer_text_init = None  # the stage-1 text branch is weights too: random here
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


@contextlib.contextmanager
def parameters_on_meta():
    """Within the block every new parameter lives on the meta device (shape only): layers are
    built, initialised (no-ops on meta) and resized without memory. Only parameters: the code
    that builds them still computes small things (e.g. drop-path rates) on the CPU."""
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def build(cfg, device="meta"):
    """Build the model of ``cfg``: parameters on the meta device (shapes only) or, for another
    device, every tensor created there (random initialisation on a GPU takes seconds)."""
    from lavis.common.registry import registry

    model_cls = registry.get_model_class(cfg.arch)
    with parameters_on_meta() if device == "meta" else torch.device(device):
        return model_cls.from_config(cfg)


def weight_bytes(model, cfg):
    """Bytes of the weights as a run holds them: the ViT at ``vit_precision``, the LLM at
    ``llm_dtype`` (LAVIS: OPT fp16, FlanT5 bf16), everything else (Q-Former, projection) fp32."""
    llm = model.llm_model
    vit = sum(p.numel() for p in model.visual_encoder.parameters())
    llm_count = sum(p.numel() for p in llm.parameters())
    rest = sum(p.numel() for p in model.parameters()) - vit - llm_count
    return (vit * BYTES[cfg.get("vit_precision", "fp16")] + llm_count * BYTES[cfg.get("llm_dtype", "float16")]
            + rest * 4), dict(vit=vit, llm=llm_count, rest=rest)


def memory_rows():
    """One row per model type: arch, model_type, LLM, parameters per part, weights GiB."""
    rows = []
    for arch, model_type in MODEL_TYPES:
        cfg = real_shape_config(arch, model_type)
        model = build(cfg)
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        size, parts = weight_bytes(model, cfg)
        llm_name = OmegaConf.load(model.default_config_path(model_type)).model.llm_model
        rows.append(dict(arch=arch, model_type=model_type, llm=llm_name, total=total, trainable=trainable,
                         vit=parts["vit"], qformer=parts["rest"], llm_params=parts["llm"], weights=size,
                         llm_dtype=cfg.get("llm_dtype", "float16")))
    return rows


def markdown(rows, measured=None) -> str:
    """The docs/memory.md table; ``measured``: {(arch, model_type): peak GiB at B=8, K=4}.
    Gradients and AdamW state: 12 bytes per trainable (fp32) parameter (gradient + two moments)."""
    measured = measured or {}
    lines = ["| model | LLM | parameters | trainable | ViT / Q-Former + proj. / LLM | weights in memory "
             "| + gradients and AdamW state | peak training step B=8, K=4 |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        peak = measured.get((row["arch"], row["model_type"]), "not measured (no GPU lent)")
        lines.append(f"| `{row['arch']}` `{row['model_type']}` | {row['llm']} ({row['llm_dtype']}) "
                     f"| {row['total'] / 1e9:.2f} B | {row['trainable'] / 1e6:.0f} M "
                     f"| {row['vit'] / 1e9:.2f} B / {row['qformer'] / 1e6:.0f} M / {row['llm_params'] / 1e9:.2f} B "
                     f"| {row['weights'] / 2 ** 30:.1f} GiB | {row['trainable'] * 12 / 2 ** 30:.1f} GiB | {peak} |")
    return "\n".join(lines) + "\n"


def main():
    print(markdown(memory_rows()))


if __name__ == "__main__":
    sys.exit(main())
