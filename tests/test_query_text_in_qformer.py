"""``model.query_text_in_qformer``: whether the query's question goes through the Q-Former. Off by
default for the paper's baselines (``none`` = plain BLIP-2 fine-tuning, ``vanilla_ict``), on for
``mmict`` and ``text_only``; one key switches it; the shot sweep's tables show it."""
import pytest
import torch
from omegaconf import OmegaConf

from lavis_mmict.models.mmict_blip2 import MMICTBlip2
from lavis_mmict.reports import shots_table

from _batches import mmict_batch


def build(**overrides):
    cfg = OmegaConf.merge(OmegaConf.load(MMICTBlip2.default_config_path("tiny")).model, overrides)
    torch.manual_seed(0)
    return MMICTBlip2.from_config(cfg).eval()


class QformerSpy:
    """The (text ids, text mask) of every M-Hub call (None for a vision-only pass)."""

    def __init__(self, model):
        self.calls = []
        model.mhub.register_forward_pre_hook(
            lambda module, args: self.calls.append((args[2], args[3]) if len(args) > 2 else None))


def query_text_seen(model, batch):
    """Per query: did any Q-Former text position of the query's row carry a token?"""
    spy = QformerSpy(model)
    with torch.no_grad():
        model(batch)
    (call,) = spy.calls
    if call is None or call[1] is None:
        return [False] * len(batch["text_input"])
    return call[1][:len(batch["text_input"])].bool().any(dim=1).tolist()


@pytest.mark.parametrize("demo_format,default", [("mmict", True), ("text_only", True), ("vanilla_ict", False),
                                                 ("none", False)])
def test_default_per_format_and_one_key_switches_it(demo_format, default):
    model = build(demo_format=demo_format)
    assert model.query_text_in_qformer is default
    assert query_text_seen(model, mmict_batch()) == [default] * 3
    switched = build(demo_format=demo_format, query_text_in_qformer=not default)
    assert query_text_seen(switched, mmict_batch()) == [not default] * 3


@pytest.mark.parametrize("demo_format", ["mmict", "none"])
def test_the_question_changes_the_query_visual_tokens_only_when_seen(demo_format):
    for seen in (True, False):
        model = build(demo_format=demo_format, query_text_in_qformer=seen)
        other = mmict_batch()
        other["text_input"] = ["a different question entirely?"] * 3
        with torch.no_grad():
            visual = model.encode(mmict_batch()).query_visual
            visual_other = model.encode(other).query_visual
        assert torch.allclose(visual, visual_other, atol=1e-6) is (not seen)


def test_shot_sweep_tables_show_it():
    rows = [{"label": f, "shots": 0, "split": "test", "metrics": {"agg_metrics": 50.0}, "query_text_in_qformer": q}
            for f, q in (("mmict", True), ("none", False))]
    table = shots_table(rows, "test")
    assert table.splitlines()[0] == "| demo_format (question in Q-Former) | K=0 |"
    assert [line.split(" | ")[0] for line in table.splitlines()[2:]] == ["| mmict (yes)", "| none (no)"]


def test_the_text_branch_trains_only_when_something_reads_text():
    """Plain BLIP-2 (none / vanilla_ict without the question) has no text branch to train: frozen, so
    DDP finds no trainable parameter without a gradient."""
    def text_branch_trainable(model):
        return {p.requires_grad for n, p in model.mhub.Qformer.named_parameters() if "intermediate.dense" in n
                and "query" not in n} | {model.mhub.Qformer.bert.embeddings.word_embeddings.weight.requires_grad}

    assert text_branch_trainable(build(demo_format="none")) == {False}
    assert text_branch_trainable(build(demo_format="vanilla_ict")) == {False}
    assert text_branch_trainable(build(demo_format="none", query_text_in_qformer=True)) == {True}
    assert text_branch_trainable(build(demo_format="mmict", query_text_in_qformer=False)) == {True}
    model = build(demo_format="none")
    model.train()
    model(mmict_batch())["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
