"""M-Hub read-out probe: which part of the M-Hub path keeps a demonstration's words.

MMICT gives the LLM each demonstration as the Q-Former's outputs at its text positions (its clip
and its text, e.g. "Question: which word is secret? Short answer: rocket", through M-Hub), projected
by ``llm_proj``. A linear read-out fitted on one split and scored on another (clips it never saw)
says, at each stage of that path, whether the token at each text position can still be recovered:

  embeddings   the Q-Former's word + position embeddings (M-Hub's input)
  layer i      the Q-Former's text positions after layer i (the last one is M-Hub's output)
  llm_proj     what the LLM receives

The read-out is ridge regression onto one-hot token ids (closed form, deterministic), scored as
top-1 accuracy over every word token and over the answer's tokens. A second read-out asks whether
M-Hub spreads the answer over the rest of the demo: the answer word from the mean of the demo's
other word positions (per question type; a code word that is not in the frames can only get there
from the answer's own position, through the Q-Former's bidirectional self-attention). One more
score needs no fitting:
is ``llm_proj``'s output at an answer's first token nearer (cosine) to the LLM's own input embedding
of that answer word than to the other answers' (the space ``vanilla_ict``/``text_only`` demos arrive
in)? The command is ``run_scripts/mmict/probe_mhub.py``.
"""
from dataclasses import dataclass
from typing import Dict, List

import torch

from lavis_mmict.datasets.demonstrations import format_demo_text
from lavis_mmict.datasets.icl_dataset import as_frames


@dataclass
class StageFeatures:
    """Per text position of many demo texts: ``features[stage]`` (P, D), ``token_ids`` (P,),
    ``is_answer`` (P,) bool; and per text: ``answer_features`` (T, D) (``llm_proj`` at the answer's
    first token), ``rest_features[stage]`` (T, D) (mean over its other word positions), ``answers``
    and ``answer_types`` (T strings; the record's ``question_type``, or "all")."""

    features: Dict[str, torch.Tensor]
    token_ids: torch.Tensor
    is_answer: torch.Tensor
    answer_features: torch.Tensor
    rest_features: Dict[str, torch.Tensor]
    answers: List[str]
    answer_types: List[str]


def demo_records(dataset, limit=None):
    """(frames (F,3,H,W), demo text, answer, question type) for each record of an ICL dataset
    split, its text written with the split's demonstration template (as a demo of that record
    would be); a list of answers gives its most frequent one, as in the demo text."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for index in range(count):
        record = dataset.dataset.annotation[index]
        text = format_demo_text(dataset.demo_config.template, record)
        answer = format_demo_text("{answer}", record)
        yield as_frames(dataset.dataset[index]), text, answer, record.get("question_type", "all")


def answer_positions(offsets, text, answer, special):
    """(L,) bool: text positions whose characters lie in the last occurrence of ``answer``."""
    start = text.lower().rindex(answer.lower())
    return torch.tensor([not is_special and begin >= start and end > begin
                         for (begin, end), is_special in zip(offsets, special)])


@torch.no_grad()
def collect_stage_features(model, records, batch_size=40):
    """Run ``mmict_blip2``'s M-Hub on (frames, text, answer, type) records as it runs demonstrations
    (``frame_mode: concat``) and keep every stage's features at the real word positions."""
    if model.frame_mode != "concat":
        raise ValueError("the M-Hub probe reads frame_mode: concat (one M-Hub pass per clip)")
    model.eval()
    tokenizer = model.qformer_tokenizer
    special_ids = set(tokenizer.all_special_ids)
    records = list(records)
    per_stage, rest, ids, answers_mask, answer_feats, answers, types = {}, {}, [], [], [], [], []
    for begin in range(0, len(records), batch_size):
        frames, texts, batch_answers, batch_types = zip(*records[begin:begin + batch_size])
        tokens = tokenizer(list(texts), padding="longest", truncation=True, max_length=model.max_txt_len,
                           return_offsets_mapping=True, return_tensors="pt")
        memory = model.encode_frames(torch.stack(frames).to(model.device)).flatten(1, 2)
        queries = model.mhub.query_tokens.expand(len(texts), -1, -1)
        query_mask = torch.ones(queries.shape[:2], dtype=tokens.attention_mask.dtype)
        hidden = model.mhub.Qformer.bert(
            tokens.input_ids.to(model.device),
            attention_mask=torch.cat([query_mask, tokens.attention_mask], dim=1).to(model.device),
            query_embeds=queries,
            encoder_hidden_states=memory,
            encoder_attention_mask=torch.ones(memory.shape[:2], dtype=torch.long, device=model.device),
            output_hidden_states=True,
            return_dict=True,
        ).hidden_states
        n = model.mhub.num_query_token
        stages = {"embeddings": hidden[0][:, n:]}
        stages.update({f"layer {i}": states[:, n:] for i, states in enumerate(hidden[1:], 1)})
        stages["llm_proj"] = model.llm_proj(hidden[-1][:, n:])
        words = tokens.attention_mask.bool() & ~torch.isin(tokens.input_ids, torch.tensor(sorted(special_ids)))
        for row, (text, answer) in enumerate(zip(texts, batch_answers)):
            special = [int(t) in special_ids for t in tokens.input_ids[row]]
            is_answer = answer_positions(tokens.offset_mapping[row].tolist(), text, answer, special)
            answer_feats.append(stages["llm_proj"][row, int(is_answer.nonzero()[0])].cpu())
            answers_mask.append(is_answer[words[row]])
            others = words[row] & ~is_answer
            for name, values in stages.items():
                rest.setdefault(name, []).append(values[row, others].mean(0).float().cpu())
        answers += batch_answers
        types += batch_types
        for name, values in stages.items():
            per_stage.setdefault(name, []).append(values[words].float().cpu())
        ids.append(tokens.input_ids[words])
    return StageFeatures({k: torch.cat(v) for k, v in per_stage.items()}, torch.cat(ids),
                         torch.cat(answers_mask), torch.stack(answer_feats),
                         {k: torch.stack(v) for k, v in rest.items()}, answers, types)


def fit_linear_readout(features, labels, l2=1e-3):
    """Ridge regression from standardised ``features`` (P, D) onto one-hot ``labels`` (P,).
    Returns a function mapping features (Q, D) to predicted labels (Q,)."""
    classes = labels.unique()
    targets = (labels.unsqueeze(1) == classes.unsqueeze(0)).double()
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)

    def design(x):
        x = ((x - mean) / std).double()
        return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)

    x = design(features)
    gram = x.T @ x + l2 * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    weights = torch.linalg.solve(gram, x.T @ targets)
    return lambda queries: classes[(design(queries) @ weights).argmax(1)]


def probe_table(fit: StageFeatures, score: StageFeatures, llm_answer_embeds: Dict[str, torch.Tensor]):
    """Rows (stage, word-token accuracy %, answer-token accuracy %) of read-outs fitted on ``fit``
    and scored on ``score``, led by the ceiling row ``seen when fitting`` (score tokens whose id
    occurs in ``fit``: a read-out cannot name the others); then the no-fit nearest-LLM-embedding
    accuracy of the answers (%). ``llm_answer_embeds``: answer word -> the LLM's input embedding
    of its first token (D,)."""
    seen = torch.isin(score.token_ids, fit.token_ids)
    rows = [("seen when fitting", 100.0 * seen.double().mean().item(),
             100.0 * seen[score.is_answer].double().mean().item())]
    for stage, features in fit.features.items():
        predict = fit_linear_readout(features, fit.token_ids)
        correct = predict(score.features[stage]) == score.token_ids
        rows.append((stage, 100.0 * correct.double().mean().item(),
                     100.0 * correct[score.is_answer].double().mean().item()))
    words = sorted(llm_answer_embeds)
    table = torch.nn.functional.normalize(torch.stack([llm_answer_embeds[w] for w in words]).float(), dim=1)
    nearest = (torch.nn.functional.normalize(score.answer_features.float(), dim=1) @ table.T).argmax(1)
    hits = [words[i] == answer for i, answer in zip(nearest.tolist(), score.answers)]
    return rows, 100.0 * sum(hits) / len(hits)


def llm_answer_embeddings(model, answers):
    """answer word -> the LLM's input embedding (D,) of its first token, written as in a demo text
    (after a space)."""
    out = {}
    for answer in sorted(set(answers)):
        token = model.llm_tokenizer(" " + answer, add_special_tokens=False).input_ids[0]
        out[answer] = model.embed_tokens(torch.tensor([token], device=model.device))[0].detach().float().cpu()
    return out


def answer_from_rest_table(fit: StageFeatures, score: StageFeatures):
    """Per stage: (stage, {question type: accuracy %}) of the answer word read out (fitted on
    ``fit``) from the mean of each ``score`` demo's other word positions."""
    vocabulary = sorted(set(fit.answers) | set(score.answers))
    fit_labels = torch.tensor([vocabulary.index(a) for a in fit.answers])
    score_labels = torch.tensor([vocabulary.index(a) for a in score.answers])
    rows = []
    for stage, features in fit.rest_features.items():
        correct = fit_linear_readout(features, fit_labels)(score.rest_features[stage]) == score_labels
        by_type = {kind: 100.0 * correct[[t == kind for t in score.answer_types]].double().mean().item()
                   for kind in sorted(set(score.answer_types))}
        rows.append((stage, by_type))
    return rows
