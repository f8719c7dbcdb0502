"""LAVIS's own ``Blip2OPT`` / ``Blip2T5`` built at tiny sizes, offline: its hub downloads (BERT
tokenizer and Q-Former, EVA ViT-g) are replaced by our tiny parts, and its LLM constructor reads a
random tiny LLM saved as a "pretrained" folder. Used as the oracle our models must reproduce."""
import shutil

import torch
from lavis.models.blip2_models.blip2_opt import Blip2OPT
from omegaconf import OmegaConf

from lavis_mmict import backbones
from lavis_mmict.models.mmict_blip2 import MMICTBlip2


def tiny_cfg(model_type, **overrides):
    return OmegaConf.merge(OmegaConf.load(MMICTBlip2.default_config_path(model_type)).model, overrides)


def build_lavis_blip2(lavis_cls, model_type, tmp_path, monkeypatch, prompt="", seed=123):
    """A LAVIS ``lavis_cls`` (Blip2OPT or Blip2T5) with the tiny parts of our ``model_type``, in
    float32 (LAVIS keeps OPT in fp16 and T5 in bf16, which CPU layers do not all support), every
    parameter moved off its fresh initialisation so that a missed key shows."""
    cfg = tiny_cfg(model_type)
    torch.manual_seed(seed)
    llm, _, _ = backbones.build_llm(cfg)  # a random tiny LLM saved as a "pretrained" folder
    llm_dir = tmp_path / f"{model_type}_llm"
    shutil.copytree(backbones.resolve_asset_path(cfg.llm_model), llm_dir)
    llm.save_pretrained(llm_dir)

    def init_vision_encoder(model_name, img_size, drop_path_rate, use_grad_checkpoint, precision):
        return backbones.build_vision_encoder(cfg)

    def init_qformer(num_query_token, vision_width, cross_attention_freq=2):
        qformer, query_tokens, _ = backbones.build_qformer(cfg, vision_width)
        return qformer, query_tokens

    monkeypatch.setattr(lavis_cls, "init_tokenizer", classmethod(lambda c: backbones.build_qformer(cfg, 48)[2]))
    monkeypatch.setattr(lavis_cls, "init_vision_encoder", classmethod(lambda c, *a: init_vision_encoder(*a)))
    monkeypatch.setattr(lavis_cls, "init_Qformer", classmethod(lambda c, *a, **k: init_qformer(*a, **k)))
    llm_kwarg = {"opt_model": str(llm_dir)} if lavis_cls is Blip2OPT else {"t5_model": str(llm_dir)}
    lavis_model = lavis_cls(img_size=32, num_query_token=cfg.num_query_token, prompt=prompt, **llm_kwarg)
    lavis_model.float()
    with torch.no_grad():  # make every trained part differ from a fresh init
        for param in lavis_model.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    return lavis_model


def stage1_standin(tmp_path, model_type="tiny", seed=321):
    """A stand-in for LAVIS's stage-1 ``blip2_pretrained.pth``: a whole Q-Former (text branch
    included) under LAVIS's names, its word table one row longer (stage 1 adds [DEC]), plus a
    stage-1-only key. Returns (path, its state dict)."""
    cfg = tiny_cfg(model_type)
    torch.manual_seed(seed)
    qformer, query_tokens, _ = backbones.build_qformer(cfg, backbones.VISION_PRESETS[cfg.vit_model]["embed_dim"])
    state = {f"Qformer.{k}": v for k, v in qformer.state_dict().items()}
    table = state["Qformer.bert.embeddings.word_embeddings.weight"]
    state["Qformer.bert.embeddings.word_embeddings.weight"] = torch.cat([table, torch.randn(1, table.shape[1])])
    state.update({"query_tokens": query_tokens.detach(), "vision_proj.weight": torch.randn(4, 4)})
    path = tmp_path / "blip2_pretrained_standin.pth"
    torch.save({"model": state}, path)
    return str(path), state
