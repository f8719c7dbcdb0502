"""Task ``icl_vqa``: in-context (video/image) question answering scored by normalised exact match.

Run config keys (all optional): ``num_beams`` (1), ``max_len`` (10), ``min_len`` (1),
``inference_method`` ("generate"), ``prompt`` ("" = the model's own prompt).

Evaluation flow (as LAVIS's ``VQATask``): every rank predicts its shard; ``BaseTask.save_result``
merges the shards into ``<result_dir>/<split>_epoch<epoch>.json`` without repeated question ids
(``DistributedSampler`` pads the last shard with repeated items); rank 0 scores it and returns
``{"agg_metrics": acc, "acc": acc, "num_questions": n}`` (accuracy in percent, plus
``acc_<question_type>`` when the data has question types); other ranks return None.
"""
import json
import logging
import os
import re

import torch
from lavis.common.dist_utils import is_main_process
from lavis.common.registry import registry
from lavis.tasks.base_task import BaseTask

__all__ = ["ICLVQATask", "normalize_answer", "answer_score", "vqa_accuracy"]

_ARTICLES = frozenset({"a", "an", "the"})
_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d)")
# punctuation (and "_"), except a decimal point between digits
_PUNCTUATION = re.compile(r"(?!(?<=\d)\.(?=\d))(?:[^\w\s]|_)")


def normalize_answer(text, number_words=True):
    """Normalise an answer for exact matching.

    Lowercase; drop apostrophes ("don't" -> "dont") and thousands commas ("1,000" -> "1000"); other
    punctuation becomes a space, except decimal points ("2.5"); drop the articles a/an/the; with
    ``number_words``, "zero".."twenty" become digits; collapse whitespace.

    >>> normalize_answer("  The two Dogs! ")
    '2 dogs'
    """
    text = str(text).lower().strip()
    text = text.replace("'", "").replace("\u2019", "")
    text = _THOUSANDS_COMMA.sub("", text)
    text = _PUNCTUATION.sub(" ", text)
    words = [w for w in text.split() if w not in _ARTICLES]
    if number_words:
        words = [_NUMBER_WORDS.get(w, w) for w in words]
    return " ".join(words)


def answer_score(prediction, ground_truth, number_words=True):
    """Score one prediction in [0, 1].

    ``ground_truth`` a string: normalised exact match. A list of annotator answers (VQAv2 style):
    ``min(1, #matching answers / 3)``, the VQA accuracy formula.
    """
    pred = normalize_answer(prediction, number_words)
    if isinstance(ground_truth, (list, tuple)):
        matches = sum(pred == normalize_answer(gt, number_words) for gt in ground_truth)
        return min(1.0, matches / 3.0)
    return float(pred == normalize_answer(ground_truth, number_words))


def vqa_accuracy(records, number_words=True):
    """Accuracy (percent) of ``records`` (dicts with question_id, answer, gt_answer).

    Each question id is scored once (the first record wins); records without a ground truth are
    not scored. Returns ``{"agg_metrics", "acc", "num_questions"}`` and ``acc_<question_type>``
    for records that carry a ``question_type``.
    """
    seen = set()
    total, count = 0.0, 0
    per_type = {}
    for record in records:
        qid = record["question_id"]
        if qid in seen or record.get("gt_answer") is None:
            continue
        seen.add(qid)
        score = answer_score(record["answer"], record["gt_answer"], number_words)
        total += score
        count += 1
        if record.get("question_type") is not None:
            type_total = per_type.setdefault(str(record["question_type"]), [0.0, 0])
            type_total[0] += score
            type_total[1] += 1
    acc = 100.0 * total / count if count else 0.0
    metrics = {"agg_metrics": acc, "acc": acc, "num_questions": count}
    for qtype, (type_score, type_count) in sorted(per_type.items()):
        metrics[f"acc_{qtype}"] = 100.0 * type_score / type_count
    return metrics


def _plain(value):
    """A JSON-friendly version of a batch entry (0-dim tensors become Python numbers)."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


@registry.register_task("icl_vqa")
class ICLVQATask(BaseTask):
    """Open-ended QA with in-context demonstrations; ``model.predict_answers`` gives one string per query."""

    def __init__(self, num_beams=1, max_len=10, min_len=1, inference_method="generate", prompt=""):
        super().__init__()
        self.num_beams = num_beams
        self.max_len = max_len
        self.min_len = min_len
        self.inference_method = inference_method
        self.prompt = prompt

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        run_cfg = cfg.run_cfg
        return cls(
            num_beams=int(run_cfg.get("num_beams", 1)),
            max_len=int(run_cfg.get("max_len", 10)),
            min_len=int(run_cfg.get("min_len", 1)),
            inference_method=str(run_cfg.get("inference_method", "generate")),
            prompt=run_cfg.get("prompt", "") or "",
        )

    def valid_step(self, model, samples):
        predict_kwargs = dict(
            samples=samples,
            num_beams=self.num_beams,
            max_len=self.max_len,
            min_len=self.min_len,
            inference_method=self.inference_method,
        )
        if self.prompt:
            predict_kwargs["prompt"] = self.prompt
        answers = model.predict_answers(**predict_kwargs)

        question_ids = samples["question_id"]
        if len(answers) != len(question_ids):
            raise ValueError(
                f"predict_answers returned {len(answers)} answers for {len(question_ids)} questions"
            )
        gt_answers = samples.get("text_output")
        question_types = samples.get("question_type")
        records = []
        for i, (answer, question_id) in enumerate(zip(answers, question_ids)):
            record = {
                "question_id": _plain(question_id),
                "answer": answer,
                "gt_answer": _plain(gt_answers[i]) if gt_answers is not None else None,
            }
            if question_types is not None:
                record["question_type"] = _plain(question_types[i])
            records.append(record)
        return records

    def after_evaluation(self, val_result, split_name, epoch=None, **kwargs):
        result_file = self.save_result(
            val_result,
            result_dir=registry.get_path("result_dir"),
            filename=f"{split_name}_epoch{epoch}",
            remove_duplicate="question_id",
        )
        if not is_main_process():
            return None

        with open(result_file) as f:
            results = json.load(f)
        metrics = vqa_accuracy(results)
        if metrics["num_questions"] < len(results):
            logging.warning(
                "%s: %d of %d answers have no ground truth and are not scored.",
                split_name, len(results) - metrics["num_questions"], len(results),
            )
        logging.info(
            "%s accuracy: %.2f%% over %d questions", split_name, metrics["acc"], metrics["num_questions"]
        )
        with open(os.path.join(registry.get_path("output_dir"), "evaluate.txt"), "a") as f:
            f.write(json.dumps({split_name: metrics}) + "\n")
        return metrics
