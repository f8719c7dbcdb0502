"""mmict_blip2 on the tiny offline model: what reaches the LLM, the loss, generation."""
import lavis
import pytest
import torch

from _batches import B, F, mmict_batch as make_batch
from _llm_spy import llm_inputs
from lavis_mmict.models.mmict_blip2 import MMICTBlip2
from lavis_mmict.models.sequence import IGNORE_INDEX


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return lavis.models.load_model("mmict_blip2", "tiny", is_eval=True)


def count_tokens(tokenizer, texts, **kwargs):
    return [len(tokenizer(t, **kwargs).input_ids) for t in texts]


def test_load_model_through_lavis_registry(model):
    assert isinstance(model, MMICTBlip2)
    assert model.demo_format == "mmict"
    assert "tiny" in MMICTBlip2.PRETRAINED_MODEL_CONFIG_DICT


def test_sequence_lengths_hold_exactly_real_demo_tokens(model):
    batch = make_batch()
    _, call = llm_inputs(model, batch)
    attended = call["attention_mask"].sum(1).tolist()
    n = model.mhub.num_query_token
    for i in range(B):
        demo_texts = [t for t, real in zip(batch["demo_text"][i], batch["demo_mask"][i]) if real]
        demo_tokens = sum(count_tokens(model.qformer_tokenizer, demo_texts))  # text positions incl. [CLS]/[SEP]
        separators = len(demo_texts)
        prompt = count_tokens(model.llm_tokenizer, model.format_prompts({"text_input": [batch["text_input"][i]]}))[0]
        target = count_tokens(model.llm_tokenizer, [" " + batch["text_output"][i] + "\n"], add_special_tokens=False)[0]
        assert attended[i] == demo_tokens + separators + n + prompt + target


def test_labels_cover_only_target_tokens(model):
    batch = make_batch()
    _, call = llm_inputs(model, batch)
    labels = call["labels"]
    for i in range(B):
        target_ids = model.llm_tokenizer(" " + batch["text_output"][i] + "\n", add_special_tokens=False).input_ids
        assert labels[i][labels[i] != IGNORE_INDEX].tolist() == target_ids
        # targets are the last real positions of each (right-padded) row
        last = int(call["attention_mask"][i].sum())
        assert labels[i][last - len(target_ids):last].tolist() == target_ids


def test_loss_is_mean_over_target_tokens_of_the_batch(model):
    batch = make_batch()
    loss, call = llm_inputs(model, batch)
    with torch.no_grad():
        logits = model.llm_model(inputs_embeds=call["inputs_embeds"], attention_mask=call["attention_mask"]).logits
    shifted_logits, shifted_labels = logits[:, :-1], call["labels"][:, 1:]
    expected = torch.nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]), shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="sum",
    ) / (shifted_labels != IGNORE_INDEX).sum()
    assert torch.allclose(loss, expected, atol=1e-5)


def test_absent_demos_and_pads_never_reach_the_llm(model):
    batch = make_batch()
    loss, _ = llm_inputs(model, batch)
    changed = make_batch()
    absent = ~changed["demo_mask"]
    changed["demo_image"][absent] = torch.randn_like(changed["demo_image"][absent]) * 10
    changed["demo_text"] = [[t if real else "garbage text that is long " * 3 for t, real in zip(row, mask)]
                            for row, mask in zip(changed["demo_text"], changed["demo_mask"].tolist())]
    loss_changed, _ = llm_inputs(model, changed)
    assert torch.allclose(loss, loss_changed, atol=1e-6)


def test_a_sample_does_not_depend_on_its_batch_neighbours(model):
    batch = make_batch()
    with torch.no_grad():
        together = model.generate(batch, num_beams=1, max_length=5)
        alone = [model.generate({k: v[i:i + 1] for k, v in batch.items()}, num_beams=1, max_length=5)[0]
                 for i in range(B)]
    assert together == alone


def test_real_demo_content_changes_the_loss(model):
    batch = make_batch()
    loss, _ = llm_inputs(model, batch)
    changed = make_batch()
    changed["demo_text"][0][0] = "Question: what color is the shape? Short answer: blue"
    loss_changed, _ = llm_inputs(model, changed)
    assert not torch.allclose(loss, loss_changed)


def test_one_vit_and_one_mhub_call_for_queries_and_demos(model):
    counts = {"vit": [], "mhub": []}
    hooks = [
        model.visual_encoder.register_forward_hook(lambda m, i, o: counts["vit"].append(i[0].shape[0])),
        model.mhub.register_forward_hook(lambda m, i, o: counts["mhub"].append(i[0].shape[0])),
    ]
    try:
        model(make_batch())
    finally:
        for h in hooks:
            h.remove()
    real_demos = int(make_batch()["demo_mask"].sum())
    assert counts["vit"] == [(B + real_demos) * F]
    assert counts["mhub"] == [B + real_demos]


def test_demo_format_none_ignores_demonstrations(model):
    model.demo_format = "none"
    try:
        batch = make_batch()
        loss, call = llm_inputs(model, batch)
        n = model.mhub.num_query_token
        prompt = count_tokens(model.llm_tokenizer, model.format_prompts(batch))
        target = count_tokens(model.llm_tokenizer, [" " + t + "\n" for t in batch["text_output"]], add_special_tokens=False)
        assert call["attention_mask"].sum(1).tolist() == [n + p + t for p, t in zip(prompt, target)]
        changed = make_batch()
        changed["demo_text"][0][0] = "Question: what color is the shape? Short answer: blue"
        assert torch.allclose(loss, llm_inputs(model, changed)[0])
    finally:
        model.demo_format = "mmict"


def test_generation_greedy_and_beam_return_one_answer_per_query(model, monkeypatch):
    generated = []
    original = model.llm_model.generate

    def recording_generate(*args, **kwargs):
        out = original(*args, **kwargs)
        generated.append(out)
        return out

    monkeypatch.setattr(model.llm_model, "generate", recording_generate)
    batch = make_batch()
    greedy = model.predict_answers(batch, num_beams=1, max_len=4)
    beam = model.predict_answers(batch, num_beams=3, max_len=4)
    assert len(greedy) == len(beam) == B
    # one LLM generate call per batch; at most max_len new tokens after the prompt's last token
    assert [out.shape[0] for out in generated] == [B, B]
    assert all(out.shape[1] - 1 <= 4 for out in generated)


def test_unknown_demo_format_is_a_clear_error():
    from lavis_mmict.models.mmict_blip2 import check_demo_format

    with pytest.raises(ValueError, match="model.demo_format 'mmict_v2'; valid: \\['mmict', 'vanilla_ict', 'text_only', 'none'\\]"):
        check_demo_format("mmict_v2")


def test_readme_python_example_runs(capsys):
    import os
    import re

    from conftest import REPO_ROOT

    readme = open(os.path.join(REPO_ROOT, "README.md")).read()
    (example,) = re.findall(r"```python\n(import torch.*?)```", readme, flags=re.S)
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2 and all(line.startswith("[") for line in printed)


def test_load_model_with_a_runner_checkpoint(tmp_path):
    import lavis_mmict
    from lavis_mmict.checkpoints import CheckpointError, atomic_torch_save, trainable_state_dict

    torch.manual_seed(1)
    trained = lavis_mmict.load_model("mmict_blip2")  # default model type: tiny
    with torch.no_grad():
        trained.llm_proj.weight.add_(1.0)
    path = tmp_path / "checkpoint_best.pth"
    atomic_torch_save({"model": trainable_state_dict(trained), "epoch": 0}, path)
    loaded = lavis_mmict.load_model("mmict_blip2", checkpoint=str(path), is_eval=True)
    assert torch.equal(loaded.llm_proj.weight, trained.llm_proj.weight)
    assert not loaded.training

    foreign = tmp_path / "other.pth"
    atomic_torch_save({"model": {"classifier.weight": torch.zeros(2, 2)}}, foreign)
    with pytest.raises(CheckpointError, match="classifier.weight"):
        lavis_mmict.load_model("mmict_blip2", checkpoint=str(foreign))
