"""model.use_grad_checkpoint checkpoints what trains (the Q-Former's layers; the LLM's layers when
freeze_llm is False; the ViT only when it trains) and leaves the loss and the gradients unchanged."""
import pytest
import torch
import torch.utils.checkpoint
from lavis.models.blip2_models import modeling_t5
from omegaconf import OmegaConf

from _batches import mmict_batch
from lavis_mmict.models.mmict_blip2 import MMICTBlip2


def build(model_type="tiny", **overrides):
    cfg = OmegaConf.load(MMICTBlip2.default_config_path(model_type)).model
    for key, value in overrides.items():
        cfg[key] = value
    torch.manual_seed(0)
    return MMICTBlip2.from_config(cfg).train()


def layers(model):
    """The Q-Former's layers and the LLM's (T5: encoder and decoder blocks)."""
    llm = model.llm_model
    stacks = [llm.encoder.block, llm.decoder.block] if model.family.encoder_decoder else [llm.model.decoder.layers]
    return list(model.mhub.Qformer.bert.encoder.layer), [layer for stack in stacks for layer in stack]


def run_step(model, monkeypatch):
    """One training step's loss, the trainable parameters' gradients, how many calls ran under a
    checkpoint, and how many forward calls the Q-Former's and the LLM's layers got."""
    checkpointed = []
    original = torch.utils.checkpoint.checkpoint
    recording = lambda *args, **kwargs: checkpointed.append(1) or original(*args, **kwargs)  # noqa: E731
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", recording)
    monkeypatch.setattr(modeling_t5, "checkpoint", recording)  # LAVIS's T5 imported the function itself
    counts = {"qformer": 0, "llm": 0}
    hooks = []
    for name, modules in zip(("qformer", "llm"), layers(model)):
        for module in modules:
            hooks.append(module.register_forward_pre_hook(lambda *_, name=name: counts.__setitem__(name, counts[name] + 1)))
    try:
        loss = model(mmict_batch())["loss"]
        forward_counts = dict(counts)
        loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
        monkeypatch.undo()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, len(checkpointed), forward_counts, counts


@pytest.mark.parametrize("model_type, freeze_llm", [("tiny", True), ("tiny", False), ("tiny_t5", False)])
def test_checkpointing_changes_what_is_kept_not_the_loss_or_gradients(monkeypatch, model_type, freeze_llm):
    plain = build(model_type, use_grad_checkpoint=False, freeze_llm=freeze_llm)
    checkpointed = build(model_type, use_grad_checkpoint=True, freeze_llm=freeze_llm)
    checkpointed.load_state_dict(plain.state_dict())

    loss, grads, plain_calls, plain_forward, _ = run_step(plain, monkeypatch)
    loss_ckpt, grads_ckpt, calls, forward, after_backward = run_step(checkpointed, monkeypatch)
    assert plain_calls == 0
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    assert grads_ckpt.keys() == grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-4, atol=1e-5, msg=lambda text, name=name: f"{name}: {text}")

    # every Q-Former layer call is checkpointed (and recomputed in backward); the LLM's only when it trains
    expected = forward["qformer"] + (0 if freeze_llm else forward["llm"])
    assert forward == plain_forward and calls == expected
    assert after_backward["qformer"] == 2 * forward["qformer"]
    assert after_backward["llm"] == forward["llm"] * (1 if freeze_llm else 2)
    assert not checkpointed.visual_encoder.use_checkpoint  # frozen: nothing of its own to recompute


def test_no_checkpointing_in_eval_mode(monkeypatch):
    model = build(use_grad_checkpoint=True, freeze_llm=False).eval()
    calls = []
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(modeling_t5, "checkpoint", lambda *a, **k: calls.append(1))
    with torch.no_grad():
        model.generate(mmict_batch(), num_beams=2, max_length=3)
    assert calls == []
