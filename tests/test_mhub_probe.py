"""The M-Hub read-out probe (lavis_mmict/mhub_probe.py, run_scripts/mmict/probe_mhub.py): its
linear read-out, where it finds answer tokens, and the command end to end on the tiny model."""
import importlib.util
import os

import pytest
import torch

from conftest import REPO_ROOT
from lavis_mmict import mhub_probe


def test_linear_readout_recovers_separable_labels_and_not_noise():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=generator) * 3
    labels = torch.arange(200) % 5
    features = centres[labels] + 0.1 * torch.randn(200, 16, generator=generator)
    predict = mhub_probe.fit_linear_readout(features[:150], labels[:150])
    assert (predict(features[150:]) == labels[150:]).all()
    noise = torch.randn(200, 16, generator=generator)
    predict = mhub_probe.fit_linear_readout(noise[:150], labels[:150])
    assert (predict(noise[150:]) == labels[150:]).double().mean() < 0.5


def test_answer_positions_are_the_answers_word_pieces(fresh_registry_paths):
    from transformers import BertTokenizerFast

    from lavis_mmict.backbones import resolve_asset_path

    tokenizer = BertTokenizerFast.from_pretrained(resolve_asset_path("assets/tiny_bert"))
    text = "Question: what is the answer? Short answer: tomatoes rojo"
    tokens = tokenizer(text, return_offsets_mapping=True)
    special = [t in tokenizer.all_special_ids for t in tokens.input_ids]
    mask = mhub_probe.answer_positions(tokens.offset_mapping, text, "tomatoes rojo", special)
    assert [t for t, m in zip(tokenizer.convert_ids_to_tokens(tokens.input_ids), mask) if m] == ["tomatoes", "ro", "##jo"]


def test_probe_command_runs_on_the_tiny_model(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("probe_mhub", os.path.join(REPO_ROOT, "run_scripts", "mmict", "probe_mhub.py"))
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    data = "datasets.synthetic_videoqa_icl.build_info"
    rows, nearest, rest = probe.main([
        "--cfg-path", os.path.join(REPO_ROOT, "projects", "mmict", "demo.yaml"), "--limit", "24", "--options",
        f"{data}.storage={tmp_path / 'data'}", f"{data}.num_clips.train=6", f"{data}.num_clips.val=1",
        f"{data}.num_clips.test=3",
    ])
    # the tiny model's two Q-Former layers, between its input embeddings and what the LLM receives
    assert [stage for stage, _, _ in rows] == ["seen when fitting", "embeddings", "layer 1", "layer 2", "llm_proj"]
    assert all(0.0 <= words <= 100.0 and 0.0 <= answers <= 100.0 for _, words, answers in rows)
    ceiling, embeddings = rows[0], rows[1]
    assert ceiling[1] > 80.0  # most test tokens occur in the fitted split
    assert embeddings[1:] == pytest.approx(ceiling[1:])  # word + position embeddings: every seen word is recoverable
    assert 0.0 <= nearest <= 100.0
    assert [stage for stage, _ in rest] == ["embeddings", "layer 1", "layer 2", "llm_proj"]
    assert all(set(by_type) == {"code", "color", "shape"} for _, by_type in rest)
    out = capsys.readouterr().out
    assert "| stage | word tokens % | answer tokens % |" in out and "| llm_proj |" in out


def test_probe_reads_what_mmict_gives_the_llm():
    """The probe's last Q-Former layer and llm_proj stages are mmict_blip2's own demo features
    (run_mhub's text outputs, projected) at the word positions."""
    import lavis_mmict

    torch.manual_seed(0)
    model = lavis_mmict.load_model("mmict_blip2", "tiny", is_eval=True)
    frames = torch.randn(3, 2, 3, 32, 32)
    texts = ["Question: what color is the shape? Short answer: red", "Question: which word is secret? "
             "Short answer: rocket", "Question: what is the code word? Short answer: tomatoes rojo"]
    answers = ["red", "rocket", "tomatoes rojo"]
    features = mhub_probe.collect_stage_features(model, zip(frames, texts, answers, ["a", "b", "c"]))
    with torch.no_grad():
        _, text_out, mask = model.run_mhub(model.encode_frames(frames), texts, torch.ones(3, dtype=torch.bool))
        ids = model.tokenize_for_qformer(texts)[0]
    words = mask & ~torch.isin(ids, torch.tensor(model.qformer_tokenizer.all_special_ids))
    assert torch.allclose(features.features["layer 2"], text_out[words], atol=1e-5)
    assert torch.allclose(features.features["llm_proj"], model.llm_proj(text_out[words]), atol=1e-5)
    assert torch.equal(features.token_ids, ids[words])
    assert features.is_answer.sum() == 1 + 1 + 3  # red | rocket | tomatoes ro ##jo
