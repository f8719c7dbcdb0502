"""Task icl_captioning: caption metrics on known predictions, tokenisation, ground truth from the
dataset's own annotations, metric availability (java, SPICE jars), result files."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from lavis.common.registry import registry
from omegaconf import OmegaConf

from lavis_mmict.tasks import caption_metrics
from lavis_mmict.tasks.caption_metrics import (
    CaptionMetricsError,
    compute_caption_metrics,
    java_available,
    ptb_tokenize,
    python_ptb_tokenize,
    resolve_metrics,
    tokenize_captions,
)
from lavis_mmict.tasks.icl_captioning import ICLCaptionTask, dataset_ground_truth, load_ground_truth_file

needs_java = pytest.mark.skipif(not java_available(), reason="java not installed")

# image 1: the prediction equals its reference (6 tokens); image 2: no word in common
GROUND_TRUTH = {1: ["A man rides a brown horse."], 2: ["Two dogs play in snow"]}
PREDICTIONS = {1: "a man rides a brown horse", 2: "cats sleep"}


def test_bleu_rouge_cider_on_known_predictions():
    scores = compute_caption_metrics(GROUND_TRUTH, PREDICTIONS, ["BLEU", "ROUGE_L", "CIDEr"], use_java=False)
    # BLEU (corpus level): 8 predicted tokens, reference length 6 + 5 = 11 -> brevity penalty
    # exp(1 - 11/8); n-gram precisions 6/8, 5/6, 4/4, 3/3 (image 2 has no 3-/4-grams)
    brevity = math.exp(1 - 11 / 8)
    precisions = [6 / 8, 5 / 6, 4 / 4, 3 / 3]
    for n in range(1, 5):
        expected = math.prod(precisions[:n]) ** (1 / n) * brevity
        assert scores[f"Bleu_{n}"] == pytest.approx(expected, rel=1e-6)
    # ROUGE-L: LCS F-score 1 for image 1, 0 for image 2
    assert scores["ROUGE_L"] == pytest.approx(0.5)
    # CIDEr-D: image 1's n-gram tf-idf vectors equal its reference's for n = 1..4 (cosine 1, no
    # length penalty) -> 10 x mean(1, 1, 1, 1) = 10; image 2 shares nothing -> 0; mean 5
    assert scores["CIDEr"] == pytest.approx(5.0)
    assert set(scores) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}


def test_rouge_l_partial_overlap_by_hand():
    # LCS("a dog runs on grass", "a dog sleeps on grass") = 4: P = R = 4/5 -> F = 0.8 for any beta
    scores = compute_caption_metrics({7: ["a dog sleeps on grass"]}, {7: "a dog runs on grass"},
                                     ["ROUGE_L"], use_java=False)
    assert scores["ROUGE_L"] == pytest.approx(0.8)


@pytest.mark.slow
@needs_java
def test_ptb_tokenizer_and_meteor_with_java():
    # pycocoevalcap's PTB jar through stdin, punctuation removed as pycocoevalcap does
    tokenized = tokenize_captions({1: ["A man's dog, isn't it?", ""], "b": ["Two (red) cars."]}, use_java=True)
    assert tokenized == {1: ["a man 's dog is n't it", ""], "b": ["two -lrb- red -rrb- cars"]}
    # METEOR of an exact match is 1; BLEU etc. agree with the pure-Python path on plain captions
    scores = compute_caption_metrics(GROUND_TRUTH, {1: PREDICTIONS[1], 2: "two dogs play in snow"},
                                     ["BLEU", "METEOR", "CIDEr"], use_java=True)
    assert scores["METEOR"] == pytest.approx(1.0)
    assert scores["Bleu_4"] == pytest.approx(1.0, abs=1e-6)


TYPICAL_CAPTIONS = [
    "A man riding a wave on top of a surfboard.",
    "Two giraffes standing next to each other in a field.",
    "A woman's hand holding a cell phone.",
    "The cat is sitting on the laptop's keyboard!",
    "there's a dog that isn't happy, and it won't eat.",
    "A plate with a sandwich, fries, and a pickle.",
    "A bus (red) parked at the stop; people wait.",
    "A 10-year-old boy flies a kite at 5:30 p.m.",
    'A sign that says "stop" on a pole.',
    "Someone is slicing an onion...",
    "The players' uniforms are blue -- and white.",
    "We're looking at 2.5 million stars, aren't we?",
    "Mr. Smith walks in St. Louis",
    "I'd say they've done it, you'll see",
    "",
]


@pytest.mark.slow
@needs_java
def test_python_tokenizer_matches_ptb_on_typical_captions():
    expected = tokenize_captions({i: [c] for i, c in enumerate(TYPICAL_CAPTIONS)}, use_java=True)
    approximated = tokenize_captions({i: [c] for i, c in enumerate(TYPICAL_CAPTIONS)}, use_java=False)
    assert approximated == expected


def test_python_tokenizer_known_outputs():
    assert python_ptb_tokenize("A man's dog, isn't it?") == "a man 's dog , is n't it ?"
    assert python_ptb_tokenize('He said "hi" (twice).') == "he said `` hi '' -lrb- twice -rrb- ."
    assert python_ptb_tokenize("It costs $3.50 at 5:30 p.m.") == "it costs $ 3.50 at 5:30 p.m."
    assert tokenize_captions({"x": ["The U.S. team -- won!!"]}, use_java=False) == {"x": ["the u.s. team won !!"]}


def test_ptb_tokenize_keeps_one_line_per_sentence(monkeypatch):
    completed = SimpleNamespace(returncode=0, stdout=b"a b\n", stderr=b"")
    monkeypatch.setattr(caption_metrics.subprocess, "run", lambda *a, **k: completed)
    assert ptb_tokenize(["A b", "", ""]) == ["a b", "", ""]  # trailing empty lines may be dropped
    failed = SimpleNamespace(returncode=1, stdout=b"", stderr=b"Error: no main class")
    monkeypatch.setattr(caption_metrics.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(CaptionMetricsError, match="no main class"):
        ptb_tokenize(["x"])


def test_metric_availability(monkeypatch):
    monkeypatch.setattr(caption_metrics, "java_available", lambda: False)
    assert resolve_metrics() == ["BLEU", "ROUGE_L", "CIDEr"]  # METEOR/SPICE need java
    with pytest.raises(CaptionMetricsError, match="METEOR needs java"):
        resolve_metrics(["BLEU", "METEOR"])
    with pytest.raises(CaptionMetricsError, match="Unknown caption metric"):
        resolve_metrics(["BLEU5"])
    with pytest.raises(CaptionMetricsError, match="No caption metric"):
        resolve_metrics([])

    monkeypatch.setattr(caption_metrics, "java_available", lambda: True)
    monkeypatch.setattr(caption_metrics.os.path, "isfile", lambda path: False)  # no SPICE jars
    assert resolve_metrics("auto") == ["BLEU", "METEOR", "ROUGE_L", "CIDEr"]
    with pytest.raises(CaptionMetricsError, match="stanford-corenlp-3.6.0"):
        resolve_metrics(["SPICE"])
    monkeypatch.setattr(caption_metrics.os.path, "isfile", lambda path: True)  # jars present
    assert resolve_metrics("auto") == ["BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE"]


# --------------------------------------------------------------------------------------------
# the task


def _task(**run):
    run.setdefault("caption_tokenizer", "python")
    run.setdefault("caption_metrics", ["BLEU", "ROUGE_L", "CIDEr"])
    return ICLCaptionTask.setup_task(cfg=SimpleNamespace(run_cfg=OmegaConf.create(run)))


class _CaptionDataset:
    """Like the caption datasets' eval split: one record per image_id with all its captions."""

    name = "fake_caption_icl/test"

    def __init__(self, records):
        self.annotation = records


class _RecordingModel:
    def __init__(self, captions):
        self.captions, self.calls = captions, []

    def generate(self, samples, **kwargs):
        self.calls.append(kwargs)
        return list(self.captions)


def test_setup_and_valid_step():
    task = _task()
    assert (task.num_beams, task.max_len, task.min_len, task.prompt) == (5, 30, 8, "")
    assert registry.get_task_class("icl_captioning") is ICLCaptionTask
    model = _RecordingModel(["a dog", "a cat"])
    records = _task(num_beams=3, max_len=20, min_len=2, prompt="A photo of").valid_step(
        model, {"image_id": torch.tensor([5, 6])})
    assert records == [{"image_id": 5, "caption": "a dog"}, {"image_id": 6, "caption": "a cat"}]
    assert model.calls[0] == dict(use_nucleus_sampling=False, num_beams=3, max_length=20, min_length=2,
                                  prompt="A photo of")
    with pytest.raises(ValueError, match="1 captions for 2 queries"):
        _task().valid_step(_RecordingModel(["x"]), {"image_id": [1, 2]})
    with pytest.raises(ValueError, match="caption_tokenizer"):
        _task(caption_tokenizer="spacy")
    with pytest.raises(CaptionMetricsError, match="Unknown caption metric"):
        _task(caption_metrics=["CIDEr-D"])


def test_ground_truth_sources(tmp_path):
    records = [{"image": "a.jpg", "caption": ["a dog", "a brown dog"], "image_id": 1},
               {"image": "b.jpg", "caption": "a cat"}]  # no image_id: the media path is the id
    assert dataset_ground_truth(_CaptionDataset(records)) == {1: ["a dog", "a brown dog"], "b.jpg": ["a cat"]}

    with_property = SimpleNamespace(name="x", captions_by_image_id={3: ["c"]}, annotation=records)
    assert dataset_ground_truth(with_property) == {3: ["c"]}
    concatenated = SimpleNamespace(datasets=[with_property, _CaptionDataset(records[:1])])
    assert dataset_ground_truth(concatenated) == {3: ["c"], 1: ["a dog", "a brown dog"]}

    ann_file = tmp_path / "test.json"
    ann_file.write_text(json.dumps(records))
    from_files = SimpleNamespace(name="y", annotation=None, annotation_paths=[str(ann_file)])
    assert dataset_ground_truth(from_files) == {1: ["a dog", "a brown dog"], "b.jpg": ["a cat"]}

    coco_gt = tmp_path / "coco_karpathy_test_gt.json"
    coco_gt.write_text(json.dumps({"images": [{"id": 9}], "annotations": [
        {"image_id": 9, "caption": "one", "id": 1}, {"image_id": 9, "caption": "two", "id": 2}]}))
    assert load_ground_truth_file(str(coco_gt)) == {9: ["one", "two"]}

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image": "a.jpg"}]))
    with pytest.raises(ValueError, match=r"bad.json: record 0 has no 'caption'"):
        load_ground_truth_file(str(bad))
    bad.write_text(json.dumps({"annotations": [{"caption": "x"}]}))
    with pytest.raises(ValueError, match=r"annotation 0 is missing \['image_id'\]"):
        load_ground_truth_file(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_ground_truth_file(str(tmp_path / "missing.json"))


@pytest.fixture
def world_of_one():
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


@pytest.fixture
def run_dirs(tmp_path, fresh_registry_paths):
    output_dir, result_dir = tmp_path / "job", tmp_path / "job" / "result"
    result_dir.mkdir(parents=True)
    for name, path in (("output_dir", output_dir), ("result_dir", result_dir)):
        registry.mapping["paths"].pop(name, None)
        registry.register_path(name, str(path))
    return output_dir, result_dir


def test_after_evaluation_scores_against_the_datasets_annotations(run_dirs, world_of_one):
    output_dir, result_dir = run_dirs
    dataset = _CaptionDataset([{"image": "1.jpg", "caption": GROUND_TRUTH[1], "image_id": 1},
                               {"image": "2.jpg", "caption": GROUND_TRUTH[2], "image_id": 2}])
    task = _task()
    task.before_evaluation(model=None, dataset=dataset)
    val_result = [{"image_id": 1, "caption": PREDICTIONS[1]}, {"image_id": 2, "caption": PREDICTIONS[2]},
                  {"image_id": 1, "caption": PREDICTIONS[1]}]  # a padding repeat
    metrics = task.after_evaluation(val_result=val_result, split_name="test", epoch="best")
    assert metrics["CIDEr"] == pytest.approx(5.0) and metrics["ROUGE_L"] == pytest.approx(0.5)
    assert metrics["agg_metrics"] == pytest.approx(metrics["CIDEr"] + metrics["Bleu_4"])
    assert metrics["num_images"] == 2
    saved = json.loads((result_dir / "test_epochbest.json").read_text())
    assert saved == val_result[:2]
    assert json.loads((output_dir / "evaluate.txt").read_text().splitlines()[-1]) == {"test": metrics}

    # string/int ids match; a predicted id without ground truth is an error naming it
    task.before_evaluation(model=None, dataset=_CaptionDataset([{"image": "x", "caption": "a b", "image_id": "1"}]))
    assert task.score([{"image_id": 1, "caption": "a b"}], "test")["num_images"] == 1
    with pytest.raises(ValueError, match=r"have no ground-truth caption in dataset fake_caption_icl/test, e\.g\. \['42'\]"):
        task.score([{"image_id": 42, "caption": "a b"}], "test")


def test_configured_ground_truth_file_wins(tmp_path, run_dirs, world_of_one):
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps({"annotations": [{"image_id": 1, "caption": "a man rides a brown horse"}]}))
    task = _task(caption_gt_files={"test": str(gt_file)}, caption_metrics=["CIDEr", "ROUGE_L"])
    task.before_evaluation(model=None, dataset=_CaptionDataset([{"image": "q", "caption": "x", "image_id": 5}]))
    metrics = task.score([{"image_id": 1, "caption": "a man rides a brown horse"}], "test")
    assert metrics["ROUGE_L"] == pytest.approx(1.0)
    assert metrics["agg_metrics"] == metrics["CIDEr"]  # no BLEU asked: CIDEr alone
    with pytest.raises(ValueError, match="run.caption_gt_files.val is not set"):
        _task().score([{"image_id": 1, "caption": "x"}], "val")
