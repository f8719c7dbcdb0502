"""LAVIS's own BLIP-2 is the oracle: with no demonstrations (``demo_format: none``) and the question
kept out of the Q-Former, ``mmict_blip2`` (OPT and FlanT5) and ``aim_opt`` loaded from a
``Blip2OPT`` / ``Blip2T5`` state dict compute what LAVIS computes on the same batch: the loss, the
Q-Former's gradients, the beam-search tokens and the answers.

Two documented differences of argument meaning are mapped, not hidden: our ``min_length`` /
``min_len`` count generated tokens, LAVIS's count the whole sequence Hugging Face sees (OPT: the
prompt's tokens; T5: the decoder start token); and LAVIS 1.0.2's Blip2OPT has no
``predict_answers``, so ours is compared with its ``generate`` on each formatted question.
"""
import pytest
import torch
from lavis.models.blip2_models.blip2_opt import Blip2OPT
from lavis.models.blip2_models.blip2_t5 import Blip2T5

from lavis_mmict.models.aim_opt import AIMOpt
from lavis_mmict.models.mmict_blip2 import MMICTBlip2

from _aim_model import tiny_cfg as aim_tiny_cfg
from _lavis_blip2 import build_lavis_blip2, stage1_standin, tiny_cfg

CAPTION_PROMPT = "a photo of"
VQA_PROMPT = "Question: {} Short answer:"
QUESTIONS = ["what color is the shape?", "what is the code word?", "what shape is shown?"]
ANSWERS = ["a red square", "two small dogs", "blue"]
GENERATION = dict(num_beams=3, max_length=6)


def images(seed=7):
    return torch.randn(len(QUESTIONS), 3, 32, 32, generator=torch.Generator().manual_seed(seed))


class GenerateRecorder:
    """Wraps an LLM's ``generate`` and keeps the token ids it returned."""

    def __init__(self, llm):
        self.outputs = []
        original = llm.generate

        def generate(*args, **kwargs):
            output = original(*args, **kwargs)
            self.outputs.append(output)
            return output

        llm.generate = generate


def saved_state(lavis_model, tmp_path):
    path = tmp_path / "lavis_blip2.pth"
    torch.save({"model": lavis_model.state_dict()}, path)
    return str(path)


def ours_from(lavis_model, model_type, tmp_path, **overrides):
    cfg = tiny_cfg(model_type, demo_format="none", query_text_in_qformer=False,
                   pretrained=saved_state(lavis_model, tmp_path),
                   qformer_text_init=stage1_standin(tmp_path, model_type)[0], **overrides)
    torch.manual_seed(0)
    return MMICTBlip2.from_config(cfg).eval()


def aim_from(lavis_model, tmp_path, **overrides):
    cfg = aim_tiny_cfg(demo_format="none", pretrained=saved_state(lavis_model, tmp_path), **overrides)
    torch.manual_seed(0)
    return AIMOpt.from_config(cfg).eval()


def assert_same_loss_and_qformer_grads(ours, lavis_model, our_samples, lavis_samples, qformer, query_tokens, proj):
    lavis_loss = lavis_model(lavis_samples)["loss"]
    lavis_loss.backward()
    our_loss = ours(our_samples)["loss"]
    our_loss.backward()
    torch.testing.assert_close(our_loss, lavis_loss, rtol=1e-5, atol=1e-6)
    lavis_params = dict(lavis_model.Qformer.named_parameters())
    compared = 0
    for name, param in qformer.named_parameters():
        if name in lavis_params and lavis_params[name].grad is not None:
            torch.testing.assert_close(param.grad, lavis_params[name].grad, rtol=1e-4, atol=1e-7, msg=lambda m: f"{name}: {m}")
            compared += 1
    assert compared > 10
    torch.testing.assert_close(query_tokens.grad, lavis_model.query_tokens.grad, rtol=1e-4, atol=1e-7)
    lavis_proj = lavis_model.opt_proj if hasattr(lavis_model, "opt_proj") else lavis_model.t5_proj
    torch.testing.assert_close(proj.weight.grad, lavis_proj.weight.grad, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------------------- OPT
@pytest.fixture
def lavis_opt(tmp_path, monkeypatch):
    return build_lavis_blip2(Blip2OPT, "tiny", tmp_path, monkeypatch, prompt=CAPTION_PROMPT).eval()


def opt_samples():
    image = images()
    # LAVIS's captioning data: the text is "<prompt> <caption>", the loss skips the prompt's tokens
    lavis = {"image": image, "text_input": [f"{CAPTION_PROMPT} {answer}" for answer in ANSWERS]}
    ours = {"image": image, "text_input": QUESTIONS, "text_output": ANSWERS}
    return ours, lavis


def lavis_opt_generate(lavis_model, image, prompt, min_new_tokens):
    """LAVIS's Blip2OPT.generate with its min_length counting the prompt (bos + prompt tokens)."""
    prompt_length = len(lavis_model.opt_tokenizer(prompt).input_ids)
    return lavis_model.generate({"image": image, "prompt": prompt}, min_length=prompt_length + min_new_tokens,
                                **GENERATION)


def test_mmict_opt_reproduces_lavis_blip2_opt(lavis_opt, tmp_path):
    ours = ours_from(lavis_opt, "tiny", tmp_path, prompt=CAPTION_PROMPT)
    our_samples, lavis_samples = opt_samples()
    assert_same_loss_and_qformer_grads(ours, lavis_opt, our_samples, lavis_samples,
                                       ours.mhub.Qformer, ours.mhub.query_tokens, ours.llm_proj)

    lavis_recorder, our_recorder = GenerateRecorder(lavis_opt.opt_model), GenerateRecorder(ours.llm_model)
    expected = lavis_opt_generate(lavis_opt, our_samples["image"], CAPTION_PROMPT, 1)
    assert ours.generate(our_samples, min_length=1, prompt=CAPTION_PROMPT, **GENERATION) == expected
    prompt_length = len(lavis_opt.opt_tokenizer(CAPTION_PROMPT).input_ids)
    lavis_tokens = lavis_recorder.outputs[0][:, prompt_length:]
    our_tokens = our_recorder.outputs[0][:, 1:]
    width = max(lavis_tokens.shape[1], our_tokens.shape[1])
    pad = lavis_opt.opt_tokenizer.pad_token_id
    fill = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=pad)  # noqa: E731
    assert torch.equal(fill(our_tokens), fill(lavis_tokens))

    # predict_answers: LAVIS 1.0.2's Blip2OPT has none; its generate on each formatted question
    answers = ours.predict_answers(our_samples, prompt=VQA_PROMPT, num_beams=3, max_len=6, min_len=1,
                                   length_penalty=1.0)
    expected = [lavis_opt_generate(lavis_opt, our_samples["image"][i:i + 1], VQA_PROMPT.format(q), 1)[0]
                for i, q in enumerate(QUESTIONS)]
    assert answers == expected


def test_aim_opt_reproduces_lavis_blip2_opt(lavis_opt, tmp_path):
    ours = aim_from(lavis_opt, tmp_path, prompt=CAPTION_PROMPT)
    # the frozen base is what is compared: let its gradients flow as LAVIS's do
    for part in (ours.Qformer, ours.opt_proj):
        part.requires_grad_(True)
    ours.query_tokens.requires_grad_(True)
    our_samples, lavis_samples = opt_samples()
    assert_same_loss_and_qformer_grads(ours, lavis_opt, our_samples, lavis_samples,
                                       ours.Qformer, ours.query_tokens, ours.opt_proj)
    expected = lavis_opt_generate(lavis_opt, our_samples["image"], CAPTION_PROMPT, 1)
    assert ours.generate(our_samples, min_length=1, prompt=CAPTION_PROMPT, **GENERATION) == expected


# ---------------------------------------------------------------------------------------- FlanT5
def test_mmict_t5_reproduces_lavis_blip2_t5(tmp_path, monkeypatch):
    lavis_t5 = build_lavis_blip2(Blip2T5, "tiny_t5", tmp_path, monkeypatch, prompt=CAPTION_PROMPT).eval()
    ours = ours_from(lavis_t5, "tiny_t5", tmp_path, prompt=VQA_PROMPT)
    image = images()
    lavis_samples = {"image": image, "text_input": [VQA_PROMPT.format(q) for q in QUESTIONS],
                     "text_output": ANSWERS}
    our_samples = {"image": image, "text_input": QUESTIONS, "text_output": ANSWERS}
    assert_same_loss_and_qformer_grads(ours, lavis_t5, our_samples, lavis_samples,
                                       ours.mhub.Qformer, ours.mhub.query_tokens, ours.llm_proj)

    lavis_recorder, our_recorder = GenerateRecorder(lavis_t5.t5_model), GenerateRecorder(ours.llm_model)
    # T5: LAVIS's min_length counts the decoder start token
    expected = lavis_t5.generate({"image": image, "prompt": CAPTION_PROMPT}, min_length=2, **GENERATION)
    assert ours.generate({"image": image}, min_length=1, prompt=CAPTION_PROMPT, **GENERATION) == expected
    lavis_tokens, our_tokens = lavis_recorder.outputs[0][:, 1:], our_recorder.outputs[0][:, 1:]
    assert torch.equal(our_tokens, lavis_tokens[:, :our_tokens.shape[1]])
    assert (lavis_tokens[:, our_tokens.shape[1]:] == lavis_t5.t5_tokenizer.pad_token_id).all()

    expected = lavis_t5.predict_answers(dict(lavis_samples, text_input=QUESTIONS), prompt=VQA_PROMPT,
                                        num_beams=3, max_len=6, min_len=2, length_penalty=-1)
    assert ours.predict_answers(our_samples, prompt=VQA_PROMPT, num_beams=3, max_len=6, min_len=1,
                                length_penalty=-1) == expected
