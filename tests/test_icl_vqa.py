"""Task icl_vqa: official normalisation and VQA accuracy, valid_step records, result files."""
import json
import time
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from lavis.common.registry import registry
from lavis.common.vqa_tools.vqa_eval import VQAEval
from omegaconf import OmegaConf

from lavis_mmict.tasks.evaluation import unique_by_key
from lavis_mmict.tasks.icl_vqa import ICLVQATask, answer_score, normalize_answer, vqa_accuracy


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Yes", "yes"),
        ("  The Dog.  ", "dog"),
        ("\tYes\n", "yes"),
        ("a   red car", "red car"),
        ("an apple!", "apple"),
        ("theater", "theater"),  # articles only as whole words
        ("Two", "2"),
        ("none", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),  # the official table stops at ten
        ("2.5", "2.5"),  # a decimal point stays
        ("1,000", "1000"),  # a thousands comma goes (and so does all punctuation of that answer)
        ("u.s.", "us"),
        ("doesnt", "doesn't"),  # contractions get their apostrophe back
        ("The man isnt here.", "man isn't here"),
        ("ice-cream, please?", "ice cream please"),  # "-" inside a word: space; ", ": removed
        ("Dog?!", "dog"),
        ("left/right", "left right"),
        ("snake_case", "snake case"),
        ("", ""),
        ("The", ""),
    ],
)
def test_normalize_answer_is_the_official_one(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    "matches, expected",
    # mean over the 10 leave-one-out sets of min(1, matches among the other 9 / 3), by hand:
    # 1 match: 9 sets hold it -> 9 * 1/3 / 10 = 0.3; 2: (2 * 1/3 + 8 * 2/3) / 10 = 0.6;
    # 3: (3 * 2/3 + 7 * 1) / 10 = 0.9; 4 or more: every set holds at least 3 -> 1
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)],
)
def test_vqa_accuracy_over_ten_annotators(matches, expected):
    answers = ["yes"] * matches + ["no"] * (10 - matches)
    assert answer_score("Yes.", answers) == pytest.approx(expected)


def test_annotator_answers_normalisation_edge_cases():
    # disagreeing annotators: their answers get the official punctuation step
    assert answer_score("t shirt", ["t-shirt"] * 3 + ["shirt"] * 7) == pytest.approx(0.9)
    assert answer_score("T-Shirt", ["t-shirt"] * 3 + ["shirt"] * 7) == pytest.approx(0.9)
    # unanimous annotators are compared as written (official behaviour; VQAv2 answers are
    # already normalised, e.g. digits): "two" -> "2" no longer matches a raw "two"
    assert answer_score("two", ["two"] * 10) == 0.0
    assert answer_score("two", ["2"] * 10) == 1.0
    # a list of one answer is a single answer: normalised exact match
    assert answer_score("The Dog", ["dog"]) == 1.0
    with pytest.raises(ValueError, match="Empty list"):
        answer_score("dog", [])


def test_single_answer_is_normalised_exact_match():
    assert answer_score("The Dog.", "dog") == 1.0
    assert answer_score("two", "2") == 1.0
    assert answer_score("dogs", "dog") == 0.0


class _OfficialData:
    """The bits of LAVIS's VQA api object that its VQAEval.evaluate reads."""

    def __init__(self, qa):
        self.qa = qa

    def getQuesIds(self):
        return list(self.qa)


def test_scores_equal_lavis_official_vqa_eval():
    predictions = ["yes", "No.", "2", "two", "a red car", "red", "t-shirt", "the shirt", "don't know",
                   "dont know", "1,000", "3.5", "blue!", "left/right", ""]
    annotator_sets = [
        ["yes"] * 10, ["no"] * 7 + ["yes"] * 3, ["2"] * 4 + ["3"] * 6, ["2"] * 2 + ["two"] * 8,
        ["red car"] * 5 + ["red"] * 5, ["red"] * 1 + ["maroon"] * 9, ["t-shirt"] * 6 + ["shirt"] * 4,
        ["shirt"] * 2 + ["t-shirt"] * 8, ["don't know"] * 3 + ["unknown"] * 7, ["don't know"] * 10,
        ["1000"] * 5 + ["1,000"] * 5, ["3.5"] * 9 + ["3"], ["blue"] * 2 + ["navy"] * 8,
        ["left"] * 5 + ["right"] * 5, ["nothing"] * 10,
    ]
    gts, res, records = {}, {}, []
    for qid, (prediction, answers) in enumerate(zip(predictions, annotator_sets)):
        gts[qid] = {"answers": [{"answer": a, "answer_id": i} for i, a in enumerate(answers)],
                    "question_type": "what", "answer_type": "other"}
        res[qid] = {"answer": prediction}
        records.append({"question_id": qid, "answer": prediction, "gt_answer": list(answers)})
    official = VQAEval(_OfficialData(gts), _OfficialData(res), n=8)
    official.evaluate()
    for qid, record in enumerate(records):
        assert 100 * answer_score(record["answer"], record["gt_answer"]) == pytest.approx(
            official.evalQA[qid], abs=1e-5), (record, official.evalQA[qid])
    assert vqa_accuracy(records)["acc"] == pytest.approx(official.accuracy["overall"], abs=1e-5)


def test_accuracy_on_known_predictions():
    records = [
        {"question_id": 1, "answer": "The cat.", "gt_answer": "cat", "question_type": "what"},
        {"question_id": 2, "answer": "three", "gt_answer": "3", "question_type": "how many"},
        {"question_id": 3, "answer": "red", "gt_answer": "blue", "question_type": "what"},
        {"question_id": 4, "answer": "yes", "gt_answer": ["yes"] * 2 + ["no"] * 8,
         "question_type": "what", "answer_type": "yes/no"},
    ]
    metrics = vqa_accuracy(records)
    assert metrics["agg_metrics"] == metrics["acc"] == pytest.approx(100 * 2.6 / 4)
    assert metrics["num_questions"] == 4
    assert metrics["acc_what"] == pytest.approx(100 * 1.6 / 3)
    assert metrics["acc_how many"] == pytest.approx(100.0)
    assert metrics["acc_answer_type_yes/no"] == pytest.approx(60.0)


def test_duplicate_question_ids_scored_once():
    records = [
        {"question_id": 7, "answer": "yes", "gt_answer": "yes"},
        {"question_id": 8, "answer": "no", "gt_answer": "yes"},
        {"question_id": 7, "answer": "yes", "gt_answer": "yes"},  # padding repeat
        {"question_id": 9, "answer": "yes", "gt_answer": None},  # unlabelled: not scored
    ]
    metrics = vqa_accuracy(records)
    assert metrics["num_questions"] == 2
    assert metrics["acc"] == pytest.approx(50.0)
    assert vqa_accuracy([])["acc"] == 0.0


def test_unique_by_key_is_linear_and_keeps_first():
    records = [{"question_id": i % 100_000, "answer": str(i)} for i in range(200_000)]
    start = time.perf_counter()
    unique = unique_by_key(records, "question_id")
    assert time.perf_counter() - start < 5.0  # LAVIS's list-membership version takes minutes
    assert [r["question_id"] for r in unique] == list(range(100_000))
    assert unique[5]["answer"] == "5"
    assert unique_by_key([{"image_id": [1, 2]}, {"image_id": [1, 2]}], "image_id") == [{"image_id": [1, 2]}]
    with pytest.raises(KeyError, match="question_id"):
        unique_by_key([{"answer": "x"}], "question_id")


def _task(**run):
    cfg = SimpleNamespace(run_cfg=OmegaConf.create(run))
    return ICLVQATask.setup_task(cfg=cfg)


def test_setup_task_reads_run_config():
    task = _task()
    assert (task.num_beams, task.max_len, task.min_len, task.eval_log_freq) == (1, 10, 1, 10)
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
        "question_type": ["is the", "how many"],
        "answer_type": ["yes/no", "number"],
    }
    model = _RecordingModel(["Yes", "2"])
    records = _task(num_beams=2).valid_step(model, samples)
    assert records == [
        {"question_id": 11, "answer": "Yes", "gt_answer": "yes", "question_type": "is the", "answer_type": "yes/no"},
        {"question_id": 12, "answer": "2", "gt_answer": "two", "question_type": "how many", "answer_type": "number"},
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

    assert sorted(p.name for p in result_dir.iterdir()) == ["val_epoch3.json"]  # no per-rank files
    saved = json.loads((result_dir / "val_epoch3.json").read_text())
    assert [r["question_id"] for r in saved] == [1, 2]
    lines = (output_dir / "evaluate.txt").read_text().splitlines()
    assert json.loads(lines[-1]) == {"val": metrics}
