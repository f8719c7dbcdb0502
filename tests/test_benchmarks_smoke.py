"""The benchmark code runs (tiny size, one round, small batches) and compares like with like: the
per-turn reference computes the same loss as the batched model. Timings are never asserted."""
import torch

from benchmarks import tables
from benchmarks.reference import per_turn_loss
from benchmarks.sizes import build_model
from benchmarks.workloads import make_batch


def test_per_turn_reference_computes_the_batched_loss_and_gradients():
    model = build_model("tiny")
    samples = make_batch(3, 3, 2, 32, seed=4)
    samples["demo_mask"][1, 2] = False  # variable K per sample
    samples["demo_mask"][2] = False
    batched = model(samples)["loss"]
    reference = per_turn_loss(model, samples)
    torch.testing.assert_close(batched, reference, rtol=1e-5, atol=1e-6)
    params = [p for p in model.parameters() if p.requires_grad]
    grads_batched = torch.autograd.grad(batched, params, allow_unused=True)
    grads_reference = torch.autograd.grad(per_turn_loss(model, samples), params, allow_unused=True)
    for a, b in zip(grads_batched, grads_reference):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


def test_every_table_runs_at_the_tiny_size():
    results = [
        tables.training_speedup("tiny", "cpu", rounds=1, batches=(2,), shots=(2,)),
        tables.demo_cost("tiny", "cpu", rounds=1, batch=2, num_demos=2),
        tables.aim_inference("tiny", "cpu", rounds=1, batch=2, shots=(0, 2), num_beams=2, max_len=2),
        tables.aim_bank("tiny", "cpu", rounds=1, batch=2, num_demos=2),
        tables.batched_generation("tiny", "cpu", rounds=1, batch=2, single=2, shots=(1, 2), long_batch=2,
                                  num_beams=2, max_len=2),
    ]
    assert [len(t.rows) for t in results] == [1, 3, 4, 2, 8]  # generation: K x batch 1 / large x two paths
    for table in results:
        text = table.markdown()
        assert text.startswith("### ") and table.targets or table is results[0]
        assert all(len(row) == len(table.columns) for row in table.rows)
    # fused demos cost exactly their text tokens + 1 separator in the LLM (aim_opt, table 3)
    assert "-> met" in results[2].targets[0]
