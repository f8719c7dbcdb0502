"""Sequence packing: real positions keep their order, pads vanish, labels stay on targets; how the
packed pieces meet decoder-only (OPT) and encoder-decoder (T5) LLMs."""
from types import SimpleNamespace

import pytest
import torch

from lavis_mmict.models.sequence import (
    IGNORE_INDEX, NO_TOKEN, Segment, demo_segment, llm_generate, llm_loss, pack_segments,
)


def segment(values, mask, labels=None, token_ids=None):
    """Embeddings that carry their own value, so packed positions are easy to read back."""
    embeds = torch.tensor(values, dtype=torch.float).unsqueeze(-1)
    return Segment(embeds, torch.tensor(mask).bool(),
                   None if labels is None else torch.tensor(labels),
                   None if token_ids is None else torch.tensor(token_ids))


def test_right_padding_keeps_order_and_drops_pads():
    visual = segment([[1, 2], [3, 4]], [[1, 1], [1, 1]])
    prompt = segment([[5, 0], [6, 7]], [[1, 0], [1, 1]], token_ids=[[50, 0], [60, 70]])
    target = segment([[8, 9], [0, 0]], [[1, 1], [0, 0]], labels=[[80, 90], [IGNORE_INDEX, IGNORE_INDEX]])
    packed = pack_segments([visual, prompt, target], padding_side="right")
    assert packed.embeds.squeeze(-1).tolist() == [[1, 2, 5, 8, 9], [3, 4, 6, 7, 0]]
    assert packed.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert packed.labels.tolist() == [[IGNORE_INDEX] * 3 + [80, 90], [IGNORE_INDEX] * 5]
    assert packed.token_ids.tolist() == [[NO_TOKEN, NO_TOKEN, 50, NO_TOKEN, NO_TOKEN],
                                         [NO_TOKEN, NO_TOKEN, 60, 70, NO_TOKEN]]


def test_left_padding_ends_every_row_with_a_real_position():
    visual = segment([[1, 2], [3, 4]], [[1, 1], [1, 1]])
    prompt = segment([[0, 5], [6, 7]], [[0, 1], [1, 1]], token_ids=[[0, 50], [60, 70]])
    packed = pack_segments([visual, prompt], padding_side="left")
    assert packed.embeds.squeeze(-1).tolist() == [[0, 1, 2, 5], [3, 4, 6, 7]]
    assert packed.attention_mask.tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]
    assert packed.token_ids[:, -1].tolist() == [50, 70]


def test_demo_segment_masks_absent_demos_and_their_separators():
    # B=1, K=2, L=2, D=1: demo 1 has one real token, demo 2 is absent.
    demo_embeds = torch.tensor([[[[1.0], [2.0]], [[3.0], [4.0]]]])
    token_mask = torch.tensor([[[True, False], [True, True]]])
    demo_mask = torch.tensor([[True, False]])
    seg = demo_segment(demo_embeds, token_mask, demo_mask, torch.tensor([9.0]))
    packed = pack_segments([seg], padding_side="right")
    assert packed.embeds.squeeze(-1).tolist() == [[1.0, 9.0]]


def test_all_empty_rows_pack_to_zero_length():
    seg = segment([[1, 2]], [[0, 0]])
    packed = pack_segments([seg])
    assert packed.embeds.shape == (1, 0, 1)


class RecordingLLM(torch.nn.Module):
    """Stands in for an LLM: records its inputs, returns a loss-carrying output / fixed tokens."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.prefills = []  # what the decoder stack read when generation pre-filled the cache

    def get_decoder(self):
        def decoder(**kwargs):  # one layer whose keys and values are the embeddings it read
            self.prefills.append(kwargs)
            return SimpleNamespace(past_key_values=((kwargs["inputs_embeds"], kwargs["inputs_embeds"]),))
        return decoder

    def forward(self, **kwargs):
        self.calls.append(kwargs)
        return SimpleNamespace(loss=torch.tensor(0.5))

    def generate(self, **kwargs):
        self.calls.append(kwargs)
        rows = kwargs.get("input_ids", kwargs.get("inputs_embeds")).shape[0]
        return torch.arange(rows * 3).reshape(rows, 3)


def prefix_and_target():
    visual = segment([[1, 2], [3, 4]], [[1, 1], [1, 1]])
    prompt = segment([[5, 0], [6, 7]], [[1, 0], [1, 1]], token_ids=[[50, 0], [60, 70]])
    target = segment([[8, 9], [10, 0]], [[1, 1], [1, 0]], labels=[[80, 90], [100, IGNORE_INDEX]])
    return [visual, prompt], target


def test_decoder_only_loss_reads_prefix_then_target():
    llm = RecordingLLM()
    prefix, target = prefix_and_target()
    loss, inputs = llm_loss(llm, prefix, target, encoder_decoder=False)
    assert loss == 0.5 and inputs == {k: v for k, v in llm.calls[0].items() if k != "return_dict"}
    assert inputs["inputs_embeds"].squeeze(-1).tolist() == [[1, 2, 5, 8, 9], [3, 4, 6, 7, 10]]
    assert inputs["labels"].tolist() == [[IGNORE_INDEX] * 3 + [80, 90], [IGNORE_INDEX] * 4 + [100]]
    assert "decoder_attention_mask" not in inputs


def test_encoder_decoder_loss_reads_prefix_as_encoder_input_and_target_as_labels():
    llm = RecordingLLM()
    prefix, target = prefix_and_target()
    _, inputs = llm_loss(llm, prefix, target, encoder_decoder=True)
    assert inputs["inputs_embeds"].squeeze(-1).tolist() == [[1, 2, 5, 0], [3, 4, 6, 7]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert inputs["labels"].tolist() == [[80, 90], [100, IGNORE_INDEX]]
    assert inputs["decoder_attention_mask"].tolist() == [[1, 1], [1, 0]]


def test_generation_inputs_per_family():
    prefix, _ = prefix_and_target()
    t5 = RecordingLLM()
    out = llm_generate(t5, prefix, encoder_decoder=True, max_new_tokens=4, min_new_tokens=2, num_beams=3)
    kwargs = t5.calls[0]
    assert kwargs["inputs_embeds"].squeeze(-1).tolist() == [[1, 2, 5, 0], [3, 4, 6, 7]]  # right padded
    assert (kwargs["max_new_tokens"], kwargs["min_length"], kwargs["num_beams"]) == (4, 3, 3)
    assert out.tolist() == [[1, 2], [4, 5]]  # the decoder start token is dropped

    opt = RecordingLLM()
    llm_generate(opt, prefix, encoder_decoder=False, max_new_tokens=4, num_beams=2)
    kwargs = opt.calls[0]
    # left padded; the prompt's last token is the input id, the rest pre-filled once per sample
    # into a key/value cache that is repeated per beam
    assert kwargs["input_ids"].tolist() == [[50], [70]]
    ((prefill),) = opt.prefills
    assert prefill["inputs_embeds"].squeeze(-1).tolist() == [[0, 1, 2], [3, 4, 6]]
    assert prefill["attention_mask"].tolist() == [[0, 1, 1], [1, 1, 1]] and prefill["use_cache"]
    ((keys, values),) = kwargs["past_key_values"]
    assert keys.squeeze(-1).tolist() == [[0, 1, 2], [0, 1, 2], [3, 4, 6], [3, 4, 6]]
    assert "query_embeds" not in kwargs
    assert kwargs["attention_mask"].tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]
    assert kwargs["max_length"] == 5

    sampled = RecordingLLM()
    llm_generate(sampled, prefix, encoder_decoder=False, max_new_tokens=4, num_beams=5,
                 use_nucleus_sampling=True, num_return_sequences=2)
    kwargs = sampled.calls[0]
    assert kwargs["do_sample"] and kwargs["num_beams"] == 1 and kwargs["past_key_values"][0][0].shape[0] == 4

    no_prompt = [segment([[1, 2]], [[1, 1]])]
    with pytest.raises(ValueError, match="must end with a token segment"):
        llm_generate(RecordingLLM(), no_prompt, encoder_decoder=False, max_new_tokens=2)
