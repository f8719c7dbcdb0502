"""Task ``icl_vqa``: in-context (video/image) question answering, scored as VQAv2 does.

Scoring (:func:`answer_score`):

- ground truth a **list of annotator answers** (VQAv2, 10 per question): the official VQA
  accuracy. The prediction is normalised as the official evaluation does (:func:`normalize_answer`:
  punctuation, number words "zero".."ten" -> digits, articles, contractions such as "dont" ->
  "don't"); annotator answers get the official punctuation step when they disagree. With m of the
  n annotators matching, the score is the mean over the n leave-one-out subsets of
  ``min(1, matches among the other n-1 / 3)``, i.e. ``(m*min(1,(m-1)/3) + (n-m)*min(1,m/3)) / n``.
  A list of one answer is scored like a single answer.
- ground truth **one string** (MSVD-QA, MSRVTT-QA, ...): normalised exact match, both sides
  normalised with :func:`normalize_answer`.

The normalisation tables (contractions, number words, articles, punctuation) are those of the
official evaluation as shipped in LAVIS (``lavis.common.vqa_tools.vqa_eval.VQAEval``).

Run config keys (all optional): ``num_beams`` (1), ``max_len`` (10), ``min_len`` (1),
``inference_method`` ("generate"), ``prompt`` ("" = the model's own prompt), ``eval_log_freq`` (10).

Metrics (percent): ``agg_metrics`` = ``acc``, ``num_questions``, and when the data has them
``acc_<question_type>``, ``acc_answer_type_<answer_type>`` and (VizWiz's ``answerable``)
``unanswerable_ap``, ``unanswerable_f1`` (:func:`unanswerability_metrics`). Every rank predicts its shard;
the merged ``result/<split>_epoch<epoch>.json`` holds each question id once; rank 0 scores it.
"""
import logging

from lavis.common.registry import registry
from lavis.common.vqa_tools.vqa_eval import VQAEval

from lavis_mmict.datasets.records import ANSWER_BREAKDOWN_FIELDS
from lavis_mmict.tasks.binary_metrics import average_precision, f1_score
from lavis_mmict.tasks.evaluation import ICLEvalTask, plain

__all__ = ["ICLVQATask", "normalize_answer", "answer_score", "vqa_accuracy", "unanswerability_metrics"]

#: the answer VizWiz's annotators give when a question cannot be answered from the image
UNANSWERABLE = "unanswerable"

# The official tables and punctuation step (VQAEval needs no annotations for these).
_OFFICIAL = VQAEval()


def _official_punctuation(text):
    return _OFFICIAL.processPunctuation(text)


def _official_digits_articles(text):
    """Lowercase; number words -> digits; drop articles; restore contractions ("dont" -> "don't")."""
    words = [_OFFICIAL.manualMap.get(word, word) for word in text.lower().split()]
    words = [_OFFICIAL.contractions.get(word, word) for word in words if word not in _OFFICIAL.articles]
    return " ".join(words)


def normalize_answer(text):
    """Normalise an answer as the official VQA evaluation normalises predictions.

    >>> normalize_answer("Two dogs!")
    '2 dogs'
    >>> normalize_answer("The man doesnt know.")
    "man doesn't know"
    """
    text = str(text).replace("\n", " ").replace("\t", " ").strip()
    return _official_digits_articles(_official_punctuation(text))


def answer_score(prediction, ground_truth):
    """Score one prediction in [0, 1] against one answer (str) or the annotators' answers (list)."""
    pred = normalize_answer(prediction)
    if isinstance(ground_truth, (list, tuple)):
        answers = [str(answer) for answer in ground_truth]
        if not answers:
            raise ValueError("Empty list of ground-truth answers")
        if len(answers) == 1:
            return float(pred == normalize_answer(answers[0]))
        if len(set(answers)) > 1:  # official: annotator answers are cleaned only when they differ
            answers = [_official_punctuation(answer) for answer in answers]
        n = len(answers)
        m = sum(answer == pred for answer in answers)
        return (m * min(1.0, (m - 1) / 3.0) + (n - m) * min(1.0, m / 3.0)) / n
    return float(pred == normalize_answer(ground_truth))


def _mean_percent(total_count):
    total, count = total_count
    return 100.0 * total / count


def vqa_accuracy(records):
    """Accuracy (percent) of ``records`` (dicts with question_id, answer, gt_answer).

    Each question id is scored once (the first record wins); records without a ground truth are
    not scored. Returns ``agg_metrics``, ``acc``, ``num_questions``, plus ``acc_<question_type>``
    and ``acc_answer_type_<answer_type>`` for records that carry those fields.
    """
    seen = set()
    total, count = 0.0, 0
    groups = {}
    for record in records:
        qid = record["question_id"]
        if qid in seen or record.get("gt_answer") is None:
            continue
        seen.add(qid)
        score = answer_score(record["answer"], record["gt_answer"])
        total += score
        count += 1
        for field, prefix in (("question_type", "acc_"), ("answer_type", "acc_answer_type_")):
            if record.get(field) is not None:
                group = groups.setdefault(prefix + str(record[field]), [0.0, 0])
                group[0] += score
                group[1] += 1
    acc = 100.0 * total / count if count else 0.0
    metrics = {"agg_metrics": acc, "acc": acc, "num_questions": count}
    for name in sorted(groups):
        metrics[name] = _mean_percent(groups[name])
    metrics.update(unanswerability_metrics(records))
    return metrics


def unanswerability_metrics(records):
    """VizWiz's unanswerability metrics (percent) over the records that carry ``answerable``.

    As VizWiz's official evaluation: the positive class is *unanswerable* (``1 - answerable``),
    scored by ``1 - predicted answerability``; a generated answer gives a hard prediction,
    unanswerable iff it normalises to "unanswerable". Returns ``unanswerable_ap`` (average
    precision; with a 0/1 score it is R1 * P1 + (1 - R1) * share of unanswerable questions) and
    ``unanswerable_f1`` (F1 of predicting unanswerable), or {} when no record has ``answerable``.
    Each question id once (the first record wins).
    """
    seen, truth, predicted = set(), [], []
    for record in records:
        if record.get("answerable") is None or record["question_id"] in seen:
            continue
        seen.add(record["question_id"])
        truth.append(1 - int(record["answerable"]))
        predicted.append(int(normalize_answer(record["answer"]) == UNANSWERABLE))
    if not truth:
        return {}
    return {"unanswerable_ap": average_precision(truth, predicted), "unanswerable_f1": f1_score(truth, predicted)}


@registry.register_task("icl_vqa")
class ICLVQATask(ICLEvalTask):
    """Open-ended QA with in-context demonstrations; ``model.predict_answers`` gives one string per query."""

    result_id_key = "question_id"

    def __init__(self, num_beams=1, max_len=10, min_len=1, inference_method="generate", prompt="",
                 eval_log_freq=10):
        super().__init__(eval_log_freq=eval_log_freq)
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
            eval_log_freq=int(run_cfg.get("eval_log_freq", 10)),
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
        records = []
        for i, (answer, question_id) in enumerate(zip(answers, question_ids)):
            record = {
                "question_id": plain(question_id),
                "answer": answer,
                "gt_answer": plain(gt_answers[i]) if gt_answers is not None else None,
            }
            for field in ANSWER_BREAKDOWN_FIELDS:
                if samples.get(field) is not None:
                    record[field] = plain(samples[field][i])
            records.append(record)
        return records

    def score(self, results, split_name):
        metrics = vqa_accuracy(results)
        if metrics["num_questions"] < len(results):
            logging.warning(
                "%s: %d of %d answers have no ground truth and are not scored.",
                split_name, len(results) - metrics["num_questions"], len(results),
            )
        return metrics
