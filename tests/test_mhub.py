"""M-Hub: one Q-Former pass gives query outputs (first N positions) and text outputs (the rest)."""
import pytest
import torch
from omegaconf import OmegaConf

from lavis_mmict import backbones
from lavis_mmict.models.mhub import MultiModalHub
from lavis_mmict.models.mmict_blip2 import MMICTBlip2


@pytest.fixture(scope="module")
def hub_and_tokenizer():
    torch.manual_seed(0)
    cfg = OmegaConf.load(MMICTBlip2.default_config_path("tiny")).model
    qformer, query_tokens, tokenizer = backbones.build_qformer(cfg, vision_width=48)
    return MultiModalHub(qformer, query_tokens).eval(), tokenizer


def inputs(tokenizer, texts, seed=0, items=2):
    g = torch.Generator().manual_seed(seed)
    memory = torch.randn(items, 20, 48, generator=g)
    tokens = tokenizer(texts, padding="longest", return_tensors="pt")
    return memory, torch.ones(items, 20, dtype=torch.long), tokens.input_ids, tokens.attention_mask


def test_one_pass_returns_query_then_text_positions(hub_and_tokenizer):
    hub, tokenizer = hub_and_tokenizer
    memory, memory_mask, ids, mask = inputs(tokenizer, ["what is the code word?", "red"])
    out = hub(memory, memory_mask, ids, mask)
    n = hub.num_query_token
    assert out.query_features.shape == (2, n, 64)
    assert out.text_features.shape == (2, ids.shape[1], 64)
    assert out.text_mask.tolist() == mask.bool().tolist()
    # the same as reading the Q-Former's single output sequence: queries first, then text
    hidden = hub.Qformer.bert(ids, attention_mask=torch.cat([torch.ones(2, n, dtype=torch.long), mask], 1),
                              query_embeds=hub.query_tokens.expand(2, -1, -1), encoder_hidden_states=memory,
                              encoder_attention_mask=memory_mask, return_dict=True).last_hidden_state
    assert torch.allclose(out.query_features, hidden[:, :n]) and torch.allclose(out.text_features, hidden[:, n:])


def test_text_outputs_are_visual_guided_and_query_outputs_text_guided(hub_and_tokenizer):
    hub, tokenizer = hub_and_tokenizer
    memory, memory_mask, ids, mask = inputs(tokenizer, ["what is the code word?", "red"])
    base = hub(memory, memory_mask, ids, mask)
    other_video = hub(memory + torch.randn_like(memory), memory_mask, ids, mask)
    assert not torch.allclose(base.text_features, other_video.text_features, atol=1e-4)
    _, _, ids2, mask2 = inputs(tokenizer, ["what color is the shape?", "blue"])
    other_text = hub(memory, memory_mask, ids2, mask2)
    assert not torch.allclose(base.query_features, other_text.query_features, atol=1e-4)


def test_text_padding_does_not_change_real_outputs(hub_and_tokenizer):
    hub, tokenizer = hub_and_tokenizer
    memory, memory_mask, ids, mask = inputs(tokenizer, ["red"], items=1)
    alone = hub(memory, memory_mask, ids, mask)
    padded_ids = torch.cat([ids, torch.zeros(1, 5, dtype=ids.dtype)], 1)
    padded_mask = torch.cat([mask, torch.zeros(1, 5, dtype=mask.dtype)], 1)
    padded = hub(memory, memory_mask, padded_ids, padded_mask)
    length = ids.shape[1]
    assert torch.allclose(alone.query_features, padded.query_features, atol=1e-5)
    assert torch.allclose(alone.text_features, padded.text_features[:, :length], atol=1e-5)


def test_vision_only_pass_has_no_text_outputs(hub_and_tokenizer):
    hub, tokenizer = hub_and_tokenizer
    memory, memory_mask, _, _ = inputs(tokenizer, ["a", "b"])
    out = hub(memory, memory_mask)
    assert out.query_features.shape == (2, hub.num_query_token, 64) and out.text_features is None
