"""Build the BLIP-2 parts (vision encoder, Q-Former, LLM, tokenizers) from a model config.

Pretrained and tiny offline model types go through the same functions: what differs is data
(a vision preset, a Hugging Face name or a local folder holding config + tokenizer files, and
whether to load weights or initialise randomly). Tiny folders ship in ``lavis_mmict/assets``.

Config keys read here (all under ``model:``):
  vit_model            vision preset name: ``eva_clip_g`` (BLIP-2's EVA ViT-g) or ``tiny``
  vit_weights          local path to the ViT weights (default: the preset's file in the torch hub cache)
  image_size           input resolution of each frame
  drop_path_rate, use_grad_checkpoint, vit_precision (fp16|fp32), freeze_vit
  qformer_model        BERT name or folder with config.json + vocab.txt (``bert-base-uncased``)
  qformer_init         ``pretrained`` (BERT weights from qformer_model) or ``random``
  num_query_token, cross_attention_freq
  llm_model            LLM name or folder (``facebook/opt-2.7b``, ``lavis_mmict/assets/tiny_opt``)
  llm_init             ``pretrained`` or ``random``
  llm_dtype            ``float16`` | ``bfloat16`` | ``float32`` for pretrained LLM weights
  freeze_llm
"""
import logging
import os
from functools import partial

import torch
import torch.nn as nn
from lavis.models.blip2_models.blip2 import LayerNorm, disabled_train
from lavis.models.blip2_models.Qformer import BertConfig, BertLMHeadModel
from lavis.models.eva_vit import VisionTransformer, convert_weights_to_fp16, interpolate_pos_embed
from transformers import AutoConfig, AutoTokenizer, BertTokenizer

PACKAGE_ROOT = os.path.dirname(os.path.abspath(__file__))

# Vision encoders as data: the EVA ViT-g that BLIP-2 uses, and a tiny random one for offline runs.
VISION_PRESETS = {
    "eva_clip_g": dict(
        patch_size=14, embed_dim=1408, depth=39, num_heads=16, mlp_ratio=4.3637,
        weights_url="https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/eva_vit_g.pth",
    ),
    "tiny": dict(patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2.0, weights_url=None),
}

VALID_INIT = ("pretrained", "random")


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights are neither on disk nor downloadable; the message says where to put them."""


def resolve_asset_path(name_or_path):
    """``assets/...`` and ``lavis_mmict/assets/...`` refer to the files shipped in this package."""
    for prefix in ("lavis_mmict/", ""):
        if name_or_path.startswith(prefix + "assets/"):
            return os.path.join(PACKAGE_ROOT, name_or_path[len(prefix):])
    return name_or_path


def resolve_weights_file(url_or_path, what, config_key):
    """Return a local file for ``url_or_path``: the path itself, or LAVIS's download cache entry.

    Offline (``HF_HUB_OFFLINE=1``) a missing file is an immediate, explicit error instead of a
    download attempt that hangs and retries.
    """
    if os.path.isfile(url_or_path):
        return url_or_path
    if not url_or_path.startswith(("http://", "https://")):
        raise MissingWeightsError(f"{what}: file {url_or_path!r} (model.{config_key}) does not exist.")
    import timm.models.hub as timm_hub

    cached = os.path.join(timm_hub.get_cache_dir(), os.path.basename(url_or_path))
    if os.path.isfile(cached):
        return cached
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise MissingWeightsError(
            f"{what} not found at {cached} and HF_HUB_OFFLINE=1 forbids downloading it. "
            f"Download {url_or_path} to that path, or set model.{config_key} to a local copy."
        )
    from lavis.common.dist_utils import download_cached_file

    return download_cached_file(url_or_path, check_hash=False, progress=True)


def build_vision_encoder(cfg):
    """Frozen-able EVA-style ViT + the trainable LayerNorm BLIP-2 puts on its output.

    Returns (visual_encoder, ln_vision); the encoder maps (M, 3, H, W) to (M, 1 + patches, width).
    """
    name = cfg.get("vit_model", "eva_clip_g")
    if name not in VISION_PRESETS:
        raise ValueError(f"Unknown model.vit_model {name!r}; valid: {sorted(VISION_PRESETS)}")
    preset = dict(VISION_PRESETS[name])
    weights_url = preset.pop("weights_url")
    encoder = VisionTransformer(
        img_size=cfg.get("image_size", 224),
        use_mean_pooling=False,
        qkv_bias=True,
        drop_path_rate=cfg.get("drop_path_rate", 0.0),
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_checkpoint=cfg.get("use_grad_checkpoint", False),
        **preset,
    )
    weights = cfg.get("vit_weights", None) or weights_url
    if weights:
        path = resolve_weights_file(weights, f"Vision encoder weights ({name})", "vit_weights")
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        interpolate_pos_embed(encoder, state_dict)
        encoder.load_state_dict(state_dict, strict=False)
    if cfg.get("vit_precision", "fp16") == "fp16" and weights:
        convert_weights_to_fp16(encoder)
    ln_vision = LayerNorm(encoder.num_features)
    if cfg.get("freeze_vit", True):
        for param in encoder.parameters():
            param.requires_grad = False
        encoder = encoder.eval()
        encoder.train = disabled_train  # keep dropout/drop-path off while the model trains
        logging.info("freeze vision encoder")
    return encoder, ln_vision


def _check_init(cfg, key):
    value = cfg.get(key, "pretrained")
    if value not in VALID_INIT:
        raise ValueError(f"Unknown model.{key} {value!r}; valid: {list(VALID_INIT)}")
    return value


def build_qformer(cfg, vision_width):
    """BLIP-2 Q-Former with its text embeddings and text FFN kept (M-Hub reads text).

    Returns (Qformer: BertLMHeadModel without the LM head, query_tokens: (1, N, hidden), tokenizer).
    """
    name = resolve_asset_path(cfg.get("qformer_model", "bert-base-uncased"))
    num_query_token = cfg.get("num_query_token", 32)
    bert_config = BertConfig.from_pretrained(name)
    bert_config.encoder_width = vision_width
    bert_config.add_cross_attention = True
    bert_config.cross_attention_freq = cfg.get("cross_attention_freq", 2)
    bert_config.query_length = num_query_token
    if _check_init(cfg, "qformer_init") == "pretrained":
        qformer = BertLMHeadModel.from_pretrained(name, config=bert_config)
    else:
        qformer = BertLMHeadModel(bert_config)
    qformer.cls = None  # the LM head is for BLIP-2's captioning loss; M-Hub does not use it
    query_tokens = nn.Parameter(torch.zeros(1, num_query_token, bert_config.hidden_size))
    query_tokens.data.normal_(mean=0.0, std=bert_config.initializer_range)
    tokenizer = BertTokenizer.from_pretrained(name)
    return qformer, query_tokens, tokenizer


def llm_classes():
    """LLM family -> LAVIS's patched Hugging Face class (they accept ``query_embeds``)."""
    from lavis.models.blip2_models.modeling_opt import OPTForCausalLM
    from lavis.models.blip2_models.modeling_t5 import T5ForConditionalGeneration

    return {"opt": OPTForCausalLM, "t5": T5ForConditionalGeneration}


def build_llm(cfg, extra_tokens=()):
    """Return (llm, tokenizer, family) where family is ``opt`` or ``t5`` (from the LLM's config).

    ``extra_tokens`` (e.g. the demo separator) are added to the tokenizer and get embedding rows
    before the LLM is frozen.
    """
    name = resolve_asset_path(cfg.get("llm_model", "facebook/opt-2.7b"))
    llm_config = AutoConfig.from_pretrained(name)
    family = llm_config.model_type
    classes = llm_classes()
    if family not in classes:
        raise ValueError(f"model.llm_model {name!r} is a {family!r} model; supported: {sorted(classes)}")
    tokenizer = AutoTokenizer.from_pretrained(name, use_fast=False)
    if _check_init(cfg, "llm_init") == "pretrained":
        dtype = getattr(torch, cfg.get("llm_dtype", "float16"))
        llm = classes[family].from_pretrained(name, torch_dtype=dtype)
    else:
        llm = classes[family](llm_config)
    if extra_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra_tokens)})
        llm.resize_token_embeddings(len(tokenizer))
    if cfg.get("freeze_llm", True):
        for param in llm.parameters():
            param.requires_grad = False
        logging.info("freeze LLM")
    return llm, tokenizer, family
