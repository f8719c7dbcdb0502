"""Build the BLIP-2 parts (vision encoder, Q-Former, LLM, tokenizers) from a model config.

Pretrained and tiny offline model types go through the same functions: what differs is data
(a vision preset, a Hugging Face name or a local folder holding config + tokenizer files, and
whether to load weights or initialise randomly). Tiny folders ship in ``lavis_mmict/assets``.

Config keys read here (all under ``model:``):
  vit_model            vision preset name: ``eva_clip_g`` (BLIP-2's EVA ViT-g) or ``tiny``
  vit_weights          local path to the ViT weights (default: the preset's file in the torch hub cache)
  vit_init             ``pretrained`` (load the weights above) or ``random`` (the preset's architecture,
                       randomly initialised: speed and memory measurements without the weights)
  image_size           input resolution of each frame
  drop_path_rate, vit_precision (fp16|fp32), freeze_vit
  use_grad_checkpoint  activation (gradient) checkpointing of what trains: the Q-Former's layers, the
                       LLM's layers when ``freeze_llm`` is False, the ViT's blocks when ``freeze_vit``
                       is False (a frozen part has no backward of its own to recompute for)
  qformer_model        BERT name or folder with config.json + vocab.txt (``bert-base-uncased``)
  qformer_init         ``pretrained`` (BERT weights from qformer_model) or ``random``
  num_query_token, cross_attention_freq
  llm_model            LLM name or folder (``facebook/opt-2.7b``, ``lavis_mmict/assets/tiny_opt``)
  llm_init             ``pretrained`` or ``random``
  llm_dtype            ``float16`` | ``bfloat16`` | ``float32`` for pretrained LLM weights
  llm_config_overrides mapping applied to the LLM's config (FlanT5 in BLIP-2: ``dense_act_fn: gelu``)
  freeze_llm
  hf_cache_dir         Hugging Face cache folder (default: transformers' own, from HF_HOME)

Weights that are not on disk are checked for before anything is built (``check_weights_available``):
offline (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``) or with the hosts unreachable, a missing file
is one immediate :class:`MissingWeightsError` that lists every missing piece and where to put it.
"""
import logging
import os
import socket
from functools import lru_cache, partial
from types import MethodType
from urllib.parse import urlparse

import torch
import torch.nn as nn
from lavis.models.blip2_models.blip2 import LayerNorm, disabled_train
from lavis.models.blip2_models.Qformer import BertConfig, BertLMHeadModel
from lavis.models.eva_vit import VisionTransformer, convert_weights_to_fp16, interpolate_pos_embed
from transformers import AutoConfig, AutoTokenizer, BertTokenizerFast, T5TokenizerFast
from transformers.utils import hub as hf_hub

PACKAGE_ROOT = os.path.dirname(os.path.abspath(__file__))

# Vision encoders as data: the EVA ViT-g that BLIP-2 uses, and a tiny random one for offline runs.
VISION_PRESETS = {
    "eva_clip_g": dict(
        patch_size=14, embed_dim=1408, depth=39, num_heads=16, mlp_ratio=4.3637,
        weights_url="https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/eva_vit_g.pth",
    ),
    "tiny": dict(patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2.0, weights_url=None),
    # A small random encoder for CPU benchmarks at 224 px (benchmarks/, "small" size).
    "small": dict(patch_size=16, embed_dim=256, depth=6, num_heads=4, mlp_ratio=4.0, weights_url=None),
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


# ------------------------------------------------------------------ where weights come from
_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_offline():
    """True when the user forbade downloads (Hugging Face's offline switches)."""
    return any(os.environ.get(k, "0").upper() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@lru_cache(maxsize=None)
def host_reachable(host, port=443, timeout=3.0):
    """One short TCP probe, so a machine without network fails at once instead of retrying for
    minutes inside transformers/torch.hub. Behind a proxy the probe is skipped (assumed reachable)."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _download_blocked(host):
    """Why nothing can be downloaded from ``host`` now, or None if it can."""
    if hub_offline():
        return "HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set"
    if not host_reachable(host):
        return f"{host} cannot be reached"
    return None


def _url_cache_path(url):
    import timm.models.hub as timm_hub  # LAVIS's download cache ($TORCH_HOME/hub/checkpoints)

    return os.path.join(timm_hub.get_cache_dir(), os.path.basename(urlparse(url).path))


def _missing_url_or_file(url_or_path, what, config_key):
    """None if ``url_or_path`` is a file, cached or downloadable; else what to tell the user."""
    if os.path.isfile(url_or_path):
        return None
    if not url_or_path.startswith(("http://", "https://")):
        return f"{what}: file {url_or_path!r} (model.{config_key}) does not exist."
    cached = _url_cache_path(url_or_path)
    if os.path.isfile(cached):
        return None
    blocked = _download_blocked(urlparse(url_or_path).hostname)
    if blocked is None:
        return None
    return (f"{what} not found at {cached} and {blocked}, so it cannot be downloaded. "
            f"Download {url_or_path} to that path, or set model.{config_key} to a local copy.")


def resolve_weights_file(url_or_path, what, config_key):
    """Return a local file for ``url_or_path``: the path itself, or LAVIS's download cache entry.

    Offline (``HF_HUB_OFFLINE=1``) or with the host unreachable, a missing file is an immediate,
    explicit error instead of a download attempt that hangs and retries.
    """
    problem = _missing_url_or_file(url_or_path, what, config_key)
    if problem:
        raise MissingWeightsError(problem)
    if os.path.isfile(url_or_path):
        return url_or_path
    cached = _url_cache_path(url_or_path)
    if os.path.isfile(cached):
        return cached
    from lavis.common.dist_utils import download_cached_file

    return download_cached_file(url_or_path, check_hash=False, progress=True)


HF_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.safetensors",
                   "model.safetensors.index.json")


def hf_cache_dir(cfg):
    return cfg.get("hf_cache_dir", None) or hf_hub.TRANSFORMERS_CACHE


def hf_load_kwargs(cfg, name):
    """``from_pretrained`` arguments for ``name``: the cache folder, and local files only for a
    folder or when nothing can be downloaded (otherwise transformers asks the hub about every
    file, retrying for minutes without network, even when the file is cached)."""
    local_only = os.path.isdir(name) or _download_blocked("huggingface.co") is not None
    return {"cache_dir": cfg.get("hf_cache_dir", None), "local_files_only": local_only}


def _missing_hf_model(cfg, name, needs_weights, tokenizer_files, what, config_key):
    """None if the Hugging Face model ``name`` (a folder or a hub id) has what building needs."""
    required = [("config.json",), tokenizer_files] + ([HF_WEIGHT_FILES] if needs_weights else [])
    if os.path.isdir(name):
        absent = [alts for alts in required if not any(os.path.isfile(os.path.join(name, f)) for f in alts)]
        if not absent:
            return None
        return (f"{what}: folder {name} (model.{config_key}) lacks " +
                ", ".join(" or ".join(alts) for alts in absent) + ".")
    if name.startswith(("/", "./", "../")):
        return f"{what}: folder {name!r} (model.{config_key}) does not exist."
    cache = hf_cache_dir(cfg)
    absent = [alts for alts in required
              if not any(isinstance(hf_hub.try_to_load_from_cache(name, f, cache_dir=cache), str) for f in alts)]
    if not absent:
        return None
    blocked = _download_blocked("huggingface.co")
    if blocked is None:
        return None
    return (f"{what}: {name!r} is not in the Hugging Face cache {cache} (missing " +
            ", ".join(" or ".join(alts) for alts in absent) +
            f") and {blocked}. Download it where there is network (`huggingface-cli download {name}`, "
            f"then copy the cache; HF_HOME or model.hf_cache_dir choose the cache folder), "
            f"or set model.{config_key} to a local folder with its config, tokenizer and weights.")


def missing_weights(cfg):
    """Everything the config needs from disk or the network that is neither there nor downloadable."""
    problems = []
    vit = cfg.get("vit_model", "eva_clip_g")
    vit_weights = cfg.get("vit_weights", None) or VISION_PRESETS.get(vit, {}).get("weights_url")
    if _check_init(cfg, "vit_init") == "random":
        vit_weights = None
    if vit_weights:
        problems.append(_missing_url_or_file(vit_weights, f"Vision encoder weights ({vit})", "vit_weights"))
    qformer = resolve_asset_path(cfg.get("qformer_model", "bert-base-uncased"))
    problems.append(_missing_hf_model(cfg, qformer, cfg.get("qformer_init", "pretrained") == "pretrained",
                                      ("vocab.txt",), "Q-Former initialisation (BERT)", "qformer_model"))
    llm = resolve_asset_path(cfg.get("llm_model", "facebook/opt-2.7b"))
    llm_tokenizer = ("tokenizer.json", "vocab.json", "spiece.model")
    problems.append(_missing_hf_model(cfg, llm, cfg.get("llm_init", "pretrained") == "pretrained",
                                      llm_tokenizer, "LLM", "llm_model"))
    if cfg.get("qformer_text_init", None):
        problems.append(_missing_url_or_file(cfg.qformer_text_init, "Q-Former text branch (LAVIS's stage-1 "
                                             "blip2_pretrained.pth)", "qformer_text_init"))
    if cfg.get("pretrained", None):
        problems.append(_missing_url_or_file(cfg.pretrained, "BLIP-2 checkpoint", "pretrained"))
    if cfg.get("load_finetuned", False) and cfg.get("finetuned", None):
        problems.append(_missing_url_or_file(cfg.finetuned, "Fine-tuned checkpoint", "finetuned"))
    return [p for p in problems if p]


def check_weights_available(cfg):
    """Raise one :class:`MissingWeightsError` listing every missing piece, before building anything."""
    problems = missing_weights(cfg)
    if problems:
        raise MissingWeightsError(
            f"Cannot build model type {cfg.get('model_type', '?')!r}, weights are missing:\n"
            + "\n".join(f"  ({i}) {p}" for i, p in enumerate(problems, 1))
        )


def build_vision_encoder(cfg):
    """Frozen-able EVA-style ViT + the trainable LayerNorm BLIP-2 puts on its output.

    Returns (visual_encoder, ln_vision); the encoder maps (M, 3, H, W) to (M, 1 + patches, width).
    """
    name = cfg.get("vit_model", "eva_clip_g")
    if name not in VISION_PRESETS:
        raise ValueError(f"Unknown model.vit_model {name!r}; valid: {sorted(VISION_PRESETS)}")
    preset = dict(VISION_PRESETS[name])
    weights_url = preset.pop("weights_url")
    weights = cfg.get("vit_weights", None) or weights_url
    if _check_init(cfg, "vit_init") == "random":
        weights = None
    # find the weights before building: EVA ViT-g takes minutes and GBs to build for nothing
    path = resolve_weights_file(weights, f"Vision encoder weights ({name})", "vit_weights") if weights else None
    encoder = VisionTransformer(
        img_size=cfg.get("image_size", 224),
        use_mean_pooling=False,
        qkv_bias=True,
        drop_path_rate=cfg.get("drop_path_rate", 0.0),
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_checkpoint=bool(cfg.get("use_grad_checkpoint", False)) and not cfg.get("freeze_vit", True),
        **preset,
    )
    if path:
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
        # keep dropout/drop-path off while the model trains (bound, so encoder.eval() returns it)
        encoder.train = MethodType(disabled_train, encoder)
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
    hub_kwargs = hf_load_kwargs(cfg, name)
    bert_config = BertConfig.from_pretrained(name, **hub_kwargs)
    bert_config.encoder_width = vision_width
    bert_config.add_cross_attention = True
    bert_config.cross_attention_freq = cfg.get("cross_attention_freq", 2)
    bert_config.query_length = num_query_token
    # LAVIS's Q-Former checkpoints each layer when this is set and it is in training mode (a frozen
    # Q-Former, as in aim_opt, is kept in eval mode, so this never recomputes a frozen one)
    bert_config.gradient_checkpointing = bool(cfg.get("use_grad_checkpoint", False))
    if _check_init(cfg, "qformer_init") == "pretrained":
        qformer = BertLMHeadModel.from_pretrained(name, config=bert_config, **hub_kwargs)
    else:
        qformer = BertLMHeadModel(bert_config)
    qformer.cls = None  # the LM head is for BLIP-2's captioning loss; M-Hub does not use it
    query_tokens = nn.Parameter(torch.zeros(1, num_query_token, bert_config.hidden_size))
    query_tokens.data.normal_(mean=0.0, std=bert_config.initializer_range)
    # the fast (Rust) tokenizer: same ids as BertTokenizer, and the Q-Former tokenizes every demo text each step
    tokenizer = BertTokenizerFast.from_pretrained(name, **hub_kwargs)
    return qformer, query_tokens, tokenizer


def llm_classes():
    """LLM family -> LAVIS's patched Hugging Face class (they accept ``query_embeds``)."""
    from lavis.models.blip2_models.modeling_opt import OPTForCausalLM
    from lavis.models.blip2_models.modeling_t5 import T5ForConditionalGeneration

    return {"opt": OPTForCausalLM, "t5": T5ForConditionalGeneration}


def load_llm_tokenizer(name, family, **hub_kwargs):
    """The tokenizers LAVIS's BLIP-2 uses: OPT's slow GPT-2 BPE, FlanT5's ``T5TokenizerFast``."""
    if family == "t5":
        return T5TokenizerFast.from_pretrained(name, **hub_kwargs)
    return AutoTokenizer.from_pretrained(name, use_fast=False, **hub_kwargs)


def add_special_tokens(tokenizer, llm, tokens):
    """Add ``tokens`` as special tokens (keeping the tokenizer's own, e.g. T5's <extra_id_*>) and
    give them embedding rows. Tables with spare rows (FlanT5: 32128 rows, 32100 pieces) are not
    resized, so the frozen LLM keeps its exact shapes and checkpoints."""
    known = list(tokenizer.additional_special_tokens)
    tokenizer.add_special_tokens({"additional_special_tokens": known + [t for t in tokens if t not in known]})
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(len(tokenizer))


def build_llm(cfg, extra_tokens=()):
    """Return (llm, tokenizer, family) where family is ``opt`` or ``t5`` (from the LLM's config).

    ``extra_tokens`` (e.g. the demo separator) are added to the tokenizer and get embedding rows
    before the LLM is frozen.
    """
    name = resolve_asset_path(cfg.get("llm_model", "facebook/opt-2.7b"))
    hub_kwargs = hf_load_kwargs(cfg, name)
    llm_config = AutoConfig.from_pretrained(name, **hub_kwargs)
    for key, value in (cfg.get("llm_config_overrides", None) or {}).items():
        setattr(llm_config, key, value)
    family = llm_config.model_type
    classes = llm_classes()
    if family not in classes:
        raise ValueError(f"model.llm_model {name!r} is a {family!r} model; supported: {sorted(classes)}")
    tokenizer = load_llm_tokenizer(name, family, **hub_kwargs)
    if _check_init(cfg, "llm_init") == "pretrained":
        dtype_name = cfg.get("llm_dtype", "float16")
        if dtype_name not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"Unknown model.llm_dtype {dtype_name!r}; valid: ['float16', 'bfloat16', 'float32']")
        llm = classes[family].from_pretrained(name, config=llm_config, torch_dtype=getattr(torch, dtype_name),
                                              **hub_kwargs)
    else:
        llm = classes[family](llm_config)
    if extra_tokens:
        add_special_tokens(tokenizer, llm, extra_tokens)
    if cfg.get("freeze_llm", True):
        for param in llm.parameters():
            param.requires_grad = False
        logging.info("freeze LLM")
    elif cfg.get("use_grad_checkpoint", False):
        llm.gradient_checkpointing_enable()  # each decoder (T5: encoder and decoder) layer, in training mode
    return llm, tokenizer, family
