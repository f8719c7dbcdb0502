"""Task ``icl_classification``: binary classification by an in-context model (Hateful Memes).

Each query is a yes/no question (the dataset's ``answer`` is ``run.positive_answer`` or
``run.negative_answer``, default "yes" / "no"). Two predictions per query:

- the **generated answer** (``model.predict_answers``, as ``icl_vqa``), mapped to a label by this
  rule: normalised as VQA answers are (:func:`~lavis_mmict.tasks.icl_vqa.normalize_answer`), the
  answer is positive iff its first word is the positive answer ("Yes, it is." -> 1); anything
  else, "no" or an answer that is neither, is negative. Accuracy is computed from these labels.
- the **probability of the positive answer**: the model scores both answers as continuations of
  the query (``model.score_answers``: log p(answer + end of answer | demos, image, prompt), one
  batched LLM call per answer) and ``p = exp(lp_yes) / (exp(lp_yes) + exp(lp_no))``. ROC-AUC, the
  AIM paper's Hateful Memes metric, ranks the queries by p.

Metrics (percent), in this order: ``agg_metrics`` (= ``roc_auc``), ``roc_auc``, ``acc``,
``num_samples``, ``other_answers`` (share of generated answers that are neither answer).
Run config keys: those of ``icl_vqa`` (``num_beams``, ``max_len``, ``min_len``, ``prompt``, ...),
``positive_answer`` ("yes") and ``negative_answer`` ("no").
"""
import torch
from lavis.common.registry import registry

from lavis_mmict.errors import DataError
from lavis_mmict.tasks.binary_metrics import roc_auc
from lavis_mmict.tasks.evaluation import plain
from lavis_mmict.tasks.icl_vqa import ICLVQATask, normalize_answer

__all__ = ["ICLClassificationTask", "answer_label", "classification_metrics"]


def answer_label(answer, positive_answer="yes"):
    """1 if the normalised ``answer`` starts with the word ``positive_answer``, else 0."""
    words = normalize_answer(answer).split()
    return int(bool(words) and words[0] == normalize_answer(positive_answer))


def classification_metrics(records, positive_answer="yes", negative_answer="no"):
    """Metrics of records ``{"question_id", "answer", "gt_answer", "prob_positive"}`` (each id once,
    the first wins; records without ground truth are not scored). Order: agg_metrics (ROC-AUC),
    roc_auc, acc, num_samples, other_answers."""
    positive, negative = normalize_answer(positive_answer), normalize_answer(negative_answer)
    seen, truth, predicted, probabilities, other = set(), [], [], [], 0
    for record in records:
        if record["question_id"] in seen or record.get("gt_answer") is None:
            continue
        seen.add(record["question_id"])
        gt = normalize_answer(record["gt_answer"])
        if gt not in (positive, negative):
            raise DataError(f"question_id {record['question_id']!r}: ground truth {record['gt_answer']!r} is "
                            f"neither run.positive_answer {positive_answer!r} nor run.negative_answer {negative_answer!r}")
        truth.append(int(gt == positive))
        predicted.append(answer_label(record["answer"], positive_answer))
        probabilities.append(float(record["prob_positive"]))
        first_word = (normalize_answer(record["answer"]).split() or [""])[0]
        other += first_word not in (positive, negative)
    count = len(truth)
    auc = roc_auc(truth, probabilities) if count else float("nan")
    acc = 100.0 * sum(t == p for t, p in zip(truth, predicted)) / count if count else 0.0
    return {"agg_metrics": auc, "roc_auc": auc, "acc": acc, "num_samples": count,
            "other_answers": 100.0 * other / count if count else 0.0}


@registry.register_task("icl_classification")
class ICLClassificationTask(ICLVQATask):
    """Yes/no classification with in-context demonstrations: generated answer + P(positive)."""

    def __init__(self, positive_answer="yes", negative_answer="no", **kwargs):
        super().__init__(**kwargs)
        self.positive_answer, self.negative_answer = positive_answer, negative_answer

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        task = super().setup_task(cfg, **kwargs)
        task.positive_answer = str(cfg.run_cfg.get("positive_answer", "yes"))
        task.negative_answer = str(cfg.run_cfg.get("negative_answer", "no"))
        return task

    def valid_step(self, model, samples):
        records = super().valid_step(model, samples)
        log_probs = model.score_answers(samples, [self.positive_answer, self.negative_answer],
                                        prompt=self.prompt or None)
        prob_positive = torch.softmax(log_probs.float(), dim=1)[:, 0]  # exp(lp_yes) / (exp(lp_yes) + exp(lp_no))
        for record, probability in zip(records, prob_positive.tolist()):
            record["prob_positive"] = plain(probability)
            record["predicted_label"] = answer_label(record["answer"], self.positive_answer)
        return records

    def score(self, results, split_name):
        return classification_metrics(results, self.positive_answer, self.negative_answer)
