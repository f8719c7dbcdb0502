"""compat.accept_past_key_values: LAVIS's OPT/T5 generation reuses the key/value cache (transformers
4.26 passes it as ``past_key_values``), and the generated tokens equal those without a cache."""
import torch

import lavis_mmict
from _batches import make_batch
from benchmarks.reference import repeated_prefix_generation


def generate(model, samples, **kwargs):
    return model.generate(samples, num_beams=3, max_length=6, min_length=6, **kwargs)


def tiny_batch(num_frames=1):
    return make_batch(["what is it", "who is there"], [["q a"], ["q b"]], frames=num_frames)


def test_decoding_steps_read_one_new_token_and_match_uncached_generation(monkeypatch):
    for model_type in ("tiny", "tiny_t5"):
        model = lavis_mmict.load_model("mmict_blip2", model_type, is_eval=True)
        llm = model.llm_model
        lengths = []
        original = type(llm).prepare_inputs_for_generation

        def recording(self, *args, **kwargs):
            inputs = original(self, *args, **kwargs)
            ids = inputs.get("input_ids", inputs.get("decoder_input_ids"))
            lengths.append(ids.shape[1])
            return inputs

        monkeypatch.setattr(type(llm), "prepare_inputs_for_generation", recording)
        torch.manual_seed(0)
        samples = tiny_batch()
        cached = generate(model, samples)
        assert lengths[1:] and set(lengths[1:]) == {1}, (model_type, lengths)  # one new token per step
        original_generate = llm.generate
        monkeypatch.setattr(llm, "generate", lambda *a, **k: original_generate(*a, **dict(k, use_cache=False)))
        with repeated_prefix_generation():  # without a cache, OPT re-reads the prefix as query_embeds
            assert generate(model, samples) == cached, model_type
        monkeypatch.undo()
