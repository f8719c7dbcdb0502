"""Batched generation with demonstrations for both LLM families; loading through lavis_mmict and LAVIS."""
import contextlib

import lavis
import pytest
import torch

import lavis_mmict
from _batches import B, SIZE, mmict_generation_batch as make_batch
from _llm_spy import recording_generate
from lavis_mmict.models.mmict_blip2 import MMICTBlip2


@pytest.fixture(scope="module", params=["tiny", "tiny_t5"])
def model(request):
    torch.manual_seed(0)
    return lavis_mmict.load_model("mmict_blip2", request.param, is_eval=True)


def one_sample(batch, i):
    return {key: value[i:i + 1] for key, value in batch.items()}


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_generation_equals_one_sample_at_a_time(model, num_beams):
    """Variable K per sample (3, 1 and 0 demos): padding and neighbours never change an answer."""
    batch = make_batch()
    together = model.generate(batch, num_beams=num_beams, max_length=5)
    alone = [model.generate(one_sample(batch, i), num_beams=num_beams, max_length=5)[0] for i in range(B)]
    assert together == alone


def test_one_llm_generate_call_with_the_run_config_lengths(model):
    batch = make_batch()
    with recording_generate(model) as calls:
        answers = model.predict_answers(batch, num_beams=3, max_len=4, min_len=2)
    assert len(answers) == B and all(isinstance(a, str) for a in answers)
    ((kwargs, out),) = calls
    assert kwargs["num_beams"] == 3 and not kwargs["do_sample"]
    # lengths count generated tokens; Hugging Face counts the decoder start (T5) or the prompt's
    # last token (OPT, which continues it) as well
    assert kwargs["min_length"] == 3
    if model.family.encoder_decoder:
        assert kwargs["max_new_tokens"] == 4 and out.shape[1] - 1 <= 4
    else:
        assert kwargs["max_length"] == 5 and out.shape[1] - 1 <= 4
    assert out.shape[0] == B


def test_min_and_max_length_bound_the_answers(model):
    batch = make_batch()
    with recording_generate(model) as calls:
        model.generate(batch, num_beams=1, min_length=3, max_length=3)
    ((_, out),) = calls
    new_tokens = out[:, 1:]
    assert new_tokens.shape[1] == 3
    stops = (model.answer_end_id, model.llm_tokenizer.pad_token_id)
    assert all(token not in stops for token in new_tokens.flatten().tolist()), "min_length blocks early stop"


def test_nucleus_sampling_returns_num_captions_per_sample_reproducibly(model):
    batch = make_batch()
    torch.manual_seed(7)
    first = model.generate(batch, use_nucleus_sampling=True, top_p=0.9, num_captions=2, max_length=4)
    torch.manual_seed(7)
    second = model.generate(batch, use_nucleus_sampling=True, top_p=0.9, num_captions=2, max_length=4)
    assert len(first) == 2 * B and first == second


def test_predict_answers_rejects_ranking(model):
    with pytest.raises(ValueError, match="generation only"):
        model.predict_answers(make_batch(), inference_method="rank")


def test_prompt_argument_replaces_the_model_prompt(model):
    assert model.format_prompts({"text_input": ["why?"]}, prompt="Q: {} A:") == ["Q: why? A:"]
    assert model.format_prompts({"text_input": ["why?"]}) == [model.prompt.format("why?")]


def test_autocast_dtype_follows_lavis_per_family(model, monkeypatch):
    seen = []
    monkeypatch.setattr(model, "maybe_autocast", lambda dtype=torch.float16: seen.append(dtype) or contextlib.nullcontext())
    model.generate(one_sample(make_batch(), 0), num_beams=1, max_length=2)
    # the whole call under the LLM's dtype, the vision side (ViT, M-Hub) in fp16 inside it
    assert seen == [torch.bfloat16 if model.family.encoder_decoder else torch.float16, torch.float16]
    # on CPU LAVIS's maybe_autocast is a no-op: everything runs in float32
    assert isinstance(MMICTBlip2.maybe_autocast(model), contextlib.nullcontext)


def test_half_precision_weights_run_as_float32_on_cpu():
    model = lavis.models.load_model("mmict_blip2", "tiny_t5", is_eval=True)
    model.llm_model.half()  # as a real type's fp16/bf16 LLM would arrive
    answers = model.generate(one_sample(make_batch(), 0), num_beams=1, max_length=2)
    assert len(answers) == 1
    assert model.llm_model.get_input_embeddings().weight.dtype == torch.float32


def test_load_model_default_type_and_lavis_entry_points():
    from lavis.models import load_model_and_preprocess, model_zoo

    assert MMICTBlip2.default_model_type == "tiny"
    assert lavis_mmict.load_model("mmict_blip2").llm_family == "opt"  # default type: tiny (OPT)
    t5 = lavis.models.load_model("mmict_blip2", "tiny_t5")
    assert t5.llm_family == "t5" and t5.family.encoder_decoder
    model, vis_processors, txt_processors = load_model_and_preprocess("mmict_blip2", "tiny_t5", is_eval=True)
    frame = vis_processors["eval"](__import__("PIL.Image").Image.new("RGB", (64, 48)))
    assert frame.shape == (3, SIZE, SIZE)
    assert txt_processors["eval"]("What IS it?") == "what is it?"
    listed = model_zoo.model_zoo["mmict_blip2"]
    assert {"tiny", "tiny_t5", "pretrain_opt2.7b", "pretrain_opt6.7b", "pretrain_flant5xl",
            "pretrain_flant5xxl", "own_finetuned_opt2.7b", "own_finetuned_flant5xl"} <= set(listed)
    assert "mmict_blip2" in str(model_zoo)
    with pytest.raises(ValueError, match="Unknown model_type 'huge'.*tiny_t5"):
        lavis_mmict.load_model("mmict_blip2", "huge")
    with pytest.raises(ValueError, match="registered models"):
        lavis_mmict.load_model("mmict_blip3")


def test_load_model_checkpoint_fills_a_finetuned_type(tmp_path, monkeypatch):
    """lavis_mmict.load_model(name, 'own_finetuned_*', checkpoint=...) sets the type's model.finetuned."""
    from lavis_mmict.checkpoints import atomic_torch_save, trainable_state_dict

    trained = lavis_mmict.load_model("mmict_blip2", "tiny_t5")
    with torch.no_grad():
        trained.llm_proj.bias.add_(1.0)
    path = tmp_path / "checkpoint_best.pth"
    atomic_torch_save({"model": trainable_state_dict(trained), "epoch": 0}, path)
    # a finetuned type on top of tiny_t5, standing in for own_finetuned_flant5xl (no real weights here)
    import yaml

    cfg = yaml.safe_load(open(MMICTBlip2.default_config_path("tiny_t5")))
    cfg["model"].update(model_type="finetuned_tiny_t5", load_finetuned=True, finetuned=None)
    cfg_path = tmp_path / "finetuned_tiny_t5.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setitem(MMICTBlip2.PRETRAINED_MODEL_CONFIG_DICT, "finetuned_tiny_t5", str(cfg_path))
    loaded = lavis_mmict.load_model("mmict_blip2", "finetuned_tiny_t5", checkpoint=str(path))
    assert torch.equal(loaded.llm_proj.bias, trained.llm_proj.bias)


def test_spare_vocabulary_rows_decode_as_nothing():
    """OPT keeps more embedding rows than tokens (tiny: 1032 for its tokenizer): a random model can
    emit a spare row, which the tokenizer cannot decode; generation still returns text."""
    torch.manual_seed(0)
    model = lavis_mmict.load_model("mmict_blip2", "tiny", is_eval=True)
    spare = len(model.llm_tokenizer)
    assert model.llm_model.get_output_embeddings().weight.shape[0] > spare
    # make the first spare row the most likely next token everywhere
    def favour_spare_row(module, inputs, logits):
        logits[..., spare] = logits.max() + 10.0
        return logits

    model.llm_model.get_output_embeddings().register_forward_hook(favour_spare_row)
    with recording_generate(model) as calls:
        answers = model.generate(make_batch(), num_beams=1, min_length=2, max_length=2)
    ((_, out),) = calls
    assert (out[:, 1:] == spare).any()  # the spare row was generated...
    assert all(isinstance(answer, str) for answer in answers)  # ...and decoded as nothing
