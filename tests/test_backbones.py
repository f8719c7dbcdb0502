"""Backbones from config: the tiny type builds offline through the same code as real types."""
import pytest
import torch
from omegaconf import OmegaConf

from lavis_mmict import backbones
from lavis_mmict.datasets.synthetic import SYNTHETIC_VOCABULARY
from lavis_mmict.models.mmict_blip2 import SEPARATOR_TOKEN, MMICTBlip2


def tiny_config(**overrides):
    cfg = OmegaConf.load(MMICTBlip2.default_config_path("tiny")).model
    return OmegaConf.merge(cfg, overrides)


def test_tiny_parts_build_offline_with_expected_shapes():
    cfg = tiny_config()
    encoder, ln_vision = backbones.build_vision_encoder(cfg)
    features = encoder(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, 1 + (32 // 8) ** 2, 48)
    qformer, query_tokens, tokenizer = backbones.build_qformer(cfg, encoder.num_features)
    assert query_tokens.shape == (1, cfg.num_query_token, qformer.config.hidden_size)
    assert qformer.cls is None
    llm, llm_tokenizer, family = backbones.build_llm(cfg, extra_tokens=[SEPARATOR_TOKEN])
    assert family == "opt"
    assert llm.get_input_embeddings().num_embeddings == len(llm_tokenizer)
    assert len(llm_tokenizer.tokenize(SEPARATOR_TOKEN)) == 1


def test_synthetic_words_are_single_tokens_for_both_tokenizers():
    cfg = tiny_config()
    _, _, bert_tokenizer = backbones.build_qformer(cfg, 48)
    _, opt_tokenizer, _ = backbones.build_llm(cfg)
    for word in SYNTHETIC_VOCABULARY:
        assert bert_tokenizer.tokenize(word) == [word]
        assert len(opt_tokenizer(" " + word, add_special_tokens=False).input_ids) == 1, word


def test_freeze_options():
    frozen = tiny_config(freeze_vit=True, freeze_llm=True)
    encoder, ln_vision = backbones.build_vision_encoder(frozen)
    assert not any(p.requires_grad for p in encoder.parameters())
    assert all(p.requires_grad for p in ln_vision.parameters())
    encoder.train(True)  # a frozen ViT stays in eval mode while the model trains
    assert not encoder.training
    llm, _, _ = backbones.build_llm(frozen, extra_tokens=[SEPARATOR_TOKEN])
    assert not any(p.requires_grad for p in llm.parameters())
    trainable_llm, _, _ = backbones.build_llm(tiny_config(freeze_llm=False))
    assert all(p.requires_grad for p in trainable_llm.parameters())


@pytest.mark.parametrize("key,value", [("vit_model", "vit_huge"), ("qformer_init", "zeros"), ("llm_init", "warm")])
def test_unknown_choices_are_clear_errors(key, value):
    cfg = tiny_config(**{key: value})
    build = {"vit_model": lambda: backbones.build_vision_encoder(cfg),
             "qformer_init": lambda: backbones.build_qformer(cfg, 48),
             "llm_init": lambda: backbones.build_llm(cfg)}[key]
    with pytest.raises(ValueError, match=f"model.{key}"):
        build()


def test_missing_real_weights_fail_at_once_and_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = backbones.VISION_PRESETS["eva_clip_g"]["weights_url"]
    with pytest.raises(backbones.MissingWeightsError) as error:
        backbones.resolve_weights_file(url, "Vision encoder weights (eva_clip_g)", "vit_weights")
    message = str(error.value)
    assert str(tmp_path) in message and "eva_vit_g.pth" in message and "model.vit_weights" in message
    with pytest.raises(backbones.MissingWeightsError, match="model.vit_weights"):
        backbones.resolve_weights_file(str(tmp_path / "nope.pth"), "Vision encoder weights", "vit_weights")
