"""Generation pre-fills each sample's prefix once: the decoder-only LLM reads the packed prefix
(demos included) once per sample, without vocabulary logits, and its key/value cache is repeated
per beam; the generated tokens are identical to the previous path, which repeated the prefix per
beam before the first forward pass (kept as ``benchmarks.reference.repeated_prefix_generate``). FlanT5 encodes the prefix once
per sample and expands the encoder outputs (Hugging Face's own path)."""
import pytest
import torch

import lavis_mmict
from _batches import make_batch
from benchmarks.reference import repeated_prefix_generate, repeated_prefix_generation
from lavis_mmict.models.sequence import llm_generate

WORDS = "red square apple tiger stone circle blue dog cat green small run".split()


def random_batch(batch, max_demos, seed):
    """``batch`` queries with 0..max_demos real demos each (different lengths, so packing pads)."""
    generator = torch.Generator().manual_seed(seed)

    def text(n):
        return " ".join(WORDS[i] for i in torch.randint(len(WORDS), (n,), generator=generator).tolist())

    demos = []
    for _ in range(batch):
        count = int(torch.randint(max_demos + 1, (1,), generator=generator))
        demos.append([f"Question: {text(3)}? Short answer: {text(1)}" if k < count else ""
                      for k in range(max_demos)])
    questions = [text(int(torch.randint(2, 6, (1,), generator=generator))) + "?" for _ in range(batch)]
    return make_batch(questions, demos, frames=1, seed=seed)


@pytest.fixture(scope="module")
def opt_model():
    torch.manual_seed(0)
    return lavis_mmict.load_model("mmict_blip2", "tiny", is_eval=True)


def generate_hooked(model, samples, hooks, **kwargs):
    """``model.generate`` with forward hooks (removed afterwards) that record what the LLM read."""
    try:
        return model.generate(samples, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()


def settings(model, **kwargs):
    return dict(eos_token_id=model.answer_end_id, pad_token_id=model.llm_tokenizer.pad_token_id,
                repetition_penalty=1.0, length_penalty=1.0, **kwargs)


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("num_beams", [1, 5])
@pytest.mark.parametrize("lengths", [(8, 1), (4, 4)])
def test_opt_tokens_identical_to_the_repeated_prefix_path(opt_model, batch, num_beams, lengths):
    max_len, min_len = lengths
    samples = random_batch(batch, max_demos=4, seed=batch * 10 + num_beams)
    with torch.no_grad():
        prefix = opt_model.prefix_segments(samples)
        kwargs = settings(opt_model, max_new_tokens=max_len, min_new_tokens=min_len, num_beams=num_beams)
        new = llm_generate(opt_model.llm_model, prefix, False, **kwargs)
        old = repeated_prefix_generate(opt_model.llm_model, prefix, False, **kwargs)
    assert torch.equal(new, old)
    assert new.shape[0] == batch and min_len <= new.shape[1] <= max_len


def test_opt_sampling_with_several_sequences_identical(opt_model):
    samples = random_batch(3, max_demos=3, seed=5)
    kwargs = settings(opt_model, max_new_tokens=6, min_new_tokens=2, num_beams=1, use_nucleus_sampling=True,
                      num_return_sequences=2, top_p=0.9, temperature=1.0)
    with torch.no_grad():
        prefix = opt_model.prefix_segments(samples)
        torch.manual_seed(3)
        new = llm_generate(opt_model.llm_model, prefix, False, **kwargs)
        torch.manual_seed(3)
        old = repeated_prefix_generate(opt_model.llm_model, prefix, False, **kwargs)
    assert torch.equal(new, old) and new.shape[0] == 6


def test_opt_prefix_read_once_per_sample_and_logits_at_one_position(opt_model):
    """The decoder stack sees the (B, T - 1) prefix once, never B * beams copies of it, and the
    vocabulary projection only ever runs on one position per row."""
    batch, num_beams = 3, 5
    samples = random_batch(batch, max_demos=4, seed=1)
    llm = opt_model.llm_model
    decoder_rows, head_positions = [], []
    hooks = [llm.get_decoder().register_forward_pre_hook(
                 lambda m, a, k: decoder_rows.append(k["inputs_embeds"].shape[:2] if k.get("inputs_embeds") is not None
                                                     else None), with_kwargs=True),
             llm.lm_head.register_forward_pre_hook(lambda m, a: head_positions.append(a[0].shape[1]))]
    answers = generate_hooked(opt_model, samples, hooks, num_beams=num_beams, max_length=5, min_length=5)
    assert len(answers) == batch
    prefill = [shape for shape in decoder_rows if shape is not None]
    assert len(prefill) == 1 and prefill[0][0] == batch and prefill[0][1] > 20  # the demos' positions
    assert head_positions and set(head_positions) == {1}


def test_model_generate_answers_unchanged(opt_model):
    """Through ``predict_answers`` (the run's max_len/min_len): the same strings as the old path."""
    samples = random_batch(4, max_demos=3, seed=9)
    new = opt_model.predict_answers(samples, num_beams=5, max_len=6, min_len=2)
    with repeated_prefix_generation():
        assert opt_model.predict_answers(samples, num_beams=5, max_len=6, min_len=2) == new


@pytest.mark.parametrize("num_beams", [1, 5])
def test_t5_encoder_runs_once_per_sample_and_outputs_are_expanded(num_beams):
    torch.manual_seed(0)
    model = lavis_mmict.load_model("mmict_blip2", "tiny_t5", is_eval=True)
    batch = 3
    samples = random_batch(batch, max_demos=3, seed=2)
    encoder_rows, decoder_rows = [], []
    llm = model.llm_model
    hooks = [llm.get_encoder().register_forward_pre_hook(
                 lambda m, a, k: encoder_rows.append(k["inputs_embeds"].shape[0]), with_kwargs=True),
             llm.get_decoder().register_forward_pre_hook(
                 lambda m, a, k: decoder_rows.append(k["encoder_hidden_states"].shape[0]), with_kwargs=True)]
    answers = generate_hooked(model, samples, hooks, num_beams=num_beams, max_length=4, min_length=4)
    assert len(answers) == batch
    assert encoder_rows == [batch]
    assert decoder_rows and set(decoder_rows) == {batch * num_beams}
