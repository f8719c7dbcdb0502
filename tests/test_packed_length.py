"""The packed LLM input is checked against the LLM's positions before the LLM call (OPT's
max_position_embeddings; FlanT5's documented input length), and ``demonstrations.max_prefix_tokens``
drops the farthest demonstrations to fit."""
from types import SimpleNamespace

import lavis
import pytest
import torch
from omegaconf import OmegaConf

from lavis_mmict.errors import ConfigError
from lavis_mmict.models import base
from lavis_mmict.models.sequence import fit_demos
from lavis_mmict.tasks.icl_vqa import ICLVQATask

from _batches import mmict_batch, mmict_generation_batch
from _llm_spy import llm_inputs


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return lavis.models.load_model("mmict_blip2", "tiny", is_eval=True)


@pytest.fixture
def limit(model):
    """Set the tiny OPT's position limit for one test (the table itself is not touched)."""
    config = model.llm_model.config
    saved = config.max_position_embeddings

    def set_limit(value):
        config.max_position_embeddings = value

    yield set_limit
    config.max_position_embeddings = saved
    model.max_prefix_tokens = None


def lengths(model, batch):
    return llm_inputs(model, batch)[1]["attention_mask"].sum(dim=1)


def test_fit_demos_keeps_the_demos_nearest_the_query_that_fit():
    demo_lengths = torch.tensor([[5, 3, 4], [0, 6, 2], [4, 4, 4]])
    keep = fit_demos(demo_lengths, torch.tensor([7, 8, 3]))
    assert keep.tolist() == [[False, True, True], [True, True, True], [False, False, False]]


def test_too_long_is_a_config_error_naming_k_the_lengths_and_the_limit(model, limit):
    with torch.no_grad():
        longest = int(lengths(model, mmict_batch()).max())  # sample 0: 2 demos
    limit(longest - 1)
    with pytest.raises(ConfigError) as error, torch.no_grad():
        model(mmict_batch())
    message = str(error.value)
    assert f"has {longest} positions" in message and f"max_position_embeddings = {longest - 1}" in message
    assert "K=2" in message and "demonstrations.max_prefix_tokens" in message
    limit(longest)
    with torch.no_grad():
        model(mmict_batch())  # exactly at the limit: fine


def test_generation_counts_the_new_tokens(model, limit):
    batch = mmict_generation_batch()
    with torch.no_grad():
        prefix = model.prefix_segments(batch)
    longest = int(sum(segment.mask.sum(dim=1) for segment in prefix).max())
    limit(longest + 4)
    with torch.no_grad():
        model.generate(batch, num_beams=1, max_length=4)
        with pytest.raises(ConfigError, match="5 target/new tokens"):
            model.generate(batch, num_beams=1, max_length=5)


def test_max_prefix_tokens_drops_the_farthest_demos(model, limit):
    with torch.no_grad():
        full = lengths(model, mmict_batch())
        nearest_only = mmict_batch()
        nearest_only["demo_mask"][0, 0] = False  # sample 0 keeps only its demo next to the query
        expected_loss, expected = llm_inputs(model, nearest_only)
        target = model.target_segment(nearest_only["text_output"], model.format_prompts(nearest_only))
        model.max_prefix_tokens = int(expected["attention_mask"][0].sum() - target.mask[0].sum())
        loss, call = llm_inputs(model, mmict_batch())
    assert int(call["attention_mask"][0].sum()) < int(full[0])
    assert torch.equal(call["inputs_embeds"], expected["inputs_embeds"])
    assert torch.equal(loss, expected_loss)


def test_flant5_has_a_documented_input_limit(monkeypatch):
    torch.manual_seed(0)
    t5 = lavis.models.load_model("mmict_blip2", "tiny_t5", is_eval=True)
    monkeypatch.setattr(base, "T5_MAX_INPUT_POSITIONS", 20)
    with pytest.raises(ConfigError, match="FlanT5's input length.*= 20"):
        with torch.no_grad():
            t5(mmict_batch())


def test_the_task_hands_max_prefix_tokens_to_the_model():
    model_cfg = OmegaConf.merge(OmegaConf.load("lavis_mmict/configs/models/mmict_blip2_tiny.yaml").model)
    datasets = {"a": {"demonstrations": {"num": 2, "max_prefix_tokens": 300}}, "b": {"demonstrations": {"num": 2}}}
    cfg = SimpleNamespace(model_cfg=model_cfg, datasets_cfg=OmegaConf.create(datasets))
    assert ICLVQATask().build_model(cfg).max_prefix_tokens == 300
    cfg.datasets_cfg.b.demonstrations.max_prefix_tokens = 200
    with pytest.raises(ConfigError, match="max_prefix_tokens"):
        ICLVQATask().build_model(cfg)
