"""Task icl_vqa: normaliser, scoring, valid_step records, result files and metrics."""
import json
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from lavis.common.registry import registry
from omegaconf import OmegaConf

from lavis_mmict.tasks.icl_vqa import ICLVQATask, answer_score, normalize_answer, vqa_accuracy


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Yes", "yes"),
        ("  The Dog.  ", "dog"),
        ("a   red\tcar", "red car"),
        ("an apple!", "apple"),
        ("theater", "theater"),  # articles only as whole words
        ("Two", "2"),
        ("twenty one", "20 1"),
        ("2.5", "2.5"),
        ("1,000", "1000"),
        ("don't", "dont"),
        ("ice-cream, please?", "ice cream please"),
        ("snake_case", "snake case"),
        ("", ""),
        ("The", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_number_words_are_optional():
    assert normalize_answer("Two cats", number_words=False) == "two cats"
    assert answer_score("two", "2") == 1.0
    assert answer_score("two", "2", number_words=False) == 0.0


def test_answer_score_with_annotator_lists():
    assert answer_score("Dog", ["dog", "dog", "the dog", "cat"]) == 1.0
    assert answer_score("cat", ["dog", "dog", "cat"]) == pytest.approx(1 / 3)
    assert answer_score("bird", ["dog"]) == 0.0


def test_accuracy_on_known_predictions():
    records = [
        {"question_id": 1, "answer": "The cat.", "gt_answer": "cat", "question_type": "what"},
        {"question_id": 2, "answer": "three", "gt_answer": "3", "question_type": "how many"},
        {"question_id": 3, "answer": "red", "gt_answer": "blue", "question_type": "what"},
        {"question_id": 4, "answer": "yes", "gt_answer": "no", "question_type": "what"},
    ]
    metrics = vqa_accuracy(records)
    assert metrics["agg_metrics"] == metrics["acc"] == pytest.approx(50.0)
    assert metrics["num_questions"] == 4
    assert metrics["acc_what"] == pytest.approx(100 / 3)
    assert metrics["acc_how many"] == pytest.approx(100.0)


def test_duplicate_question_ids_scored_once():
    records = [
        {"question_id": 7, "answer": "yes", "gt_answer": "yes"},
        {"question_id": 8, "answer": "no", "gt_answer": "yes"},
        {"question_id": 7, "answer": "yes", "gt_answer": "yes"},  # padding repeat
        {"question_id": 7, "answer": "yes", "gt_answer": "yes"},
    ]
    metrics = vqa_accuracy(records)
    assert metrics["num_questions"] == 2
    assert metrics["acc"] == pytest.approx(50.0)
    assert vqa_accuracy([])["acc"] == 0.0


def _task(**run):
    cfg = SimpleNamespace(run_cfg=OmegaConf.create(run))
    return ICLVQATask.setup_task(cfg=cfg)


def test_setup_task_reads_run_config():
    task = _task()
    assert (task.num_beams, task.max_len, task.min_len) == (1, 10, 1)
    assert task.inference_method == "generate" and task.prompt == ""
    task = _task(num_beams=3, max_len=5, min_len=2, inference_method="generate", prompt="Q: {}")
    assert (task.num_beams, task.max_len, task.min_len, task.prompt) == (3, 5, 2, "Q: {}")
    assert registry.get_task_class("icl_vqa") is ICLVQATask


class _RecordingModel:
    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def predict_answers(self, **kwargs):
        self.calls.append(kwargs)
        return list(self.answers)


def test_valid_step_records():
    samples = {
        "question_id": torch.tensor([11, 12]),
        "text_output": ["yes", "two"],
        "question_type": ["yes/no", "count"],
    }
    model = _RecordingModel(["Yes", "2"])
    records = _task(num_beams=2).valid_step(model, samples)
    assert records == [
        {"question_id": 11, "answer": "Yes", "gt_answer": "yes", "question_type": "yes/no"},
        {"question_id": 12, "answer": "2", "gt_answer": "two", "question_type": "count"},
    ]
    call = model.calls[0]
    assert call["samples"] is samples and call["num_beams"] == 2
    assert (call["max_len"], call["min_len"], call["inference_method"]) == (10, 1, "generate")
    assert "prompt" not in call  # "" means: the model's default prompt

    _task(prompt="Answer:").valid_step(model, {"question_id": ["a", "b"], "text_output": ["x", "y"]})
    assert model.calls[-1]["prompt"] == "Answer:"

    with pytest.raises(ValueError, match="1 answers for 2 questions"):
        _task().valid_step(_RecordingModel(["only one"]), samples)


@pytest.fixture
def world_of_one():
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def test_after_evaluation_writes_results_and_metrics(tmp_path, fresh_registry_paths, world_of_one):
    output_dir, result_dir = tmp_path / "job", tmp_path / "job" / "result"
    result_dir.mkdir(parents=True)
    for name, path in (("output_dir", output_dir), ("result_dir", result_dir)):
        registry.mapping["paths"].pop(name, None)
        registry.register_path(name, str(path))

    val_result = [
        {"question_id": 1, "answer": "a dog", "gt_answer": "dog"},
        {"question_id": 2, "answer": "cat", "gt_answer": "dog"},
        {"question_id": 1, "answer": "a dog", "gt_answer": "dog"},  # repeated by the sampler
    ]
    metrics = _task().after_evaluation(val_result=val_result, split_name="val", epoch=3)
    assert metrics == {"agg_metrics": 50.0, "acc": 50.0, "num_questions": 2}

    saved = json.loads((result_dir / "val_epoch3.json").read_text())
    assert [r["question_id"] for r in saved] == [1, 2]
    lines = (output_dir / "evaluate.txt").read_text().splitlines()
    assert json.loads(lines[-1]) == {"val": metrics}
