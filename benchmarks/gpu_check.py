"""``make gpu-check``: the GPU figures in one prepared run (under 8 minutes on one GPU), at real
shapes with random weights (no downloads: EVA ViT-g, BERT-base Q-Former, OPT-2.7B / FlanT5-XL built
from their configs, ``benchmarks/model_memory.py``), in the precision runs hold them (ViT and OPT
fp16, FlanT5 bf16) and under the models' own autocast (AMP).

    python -m benchmarks.gpu_check                                # = make gpu-check: real sizes, cuda
    python -m benchmarks.gpu_check --size small --device cpu      # the same code end to end on a CPU (the test)

Tables (markdown, printed and written to ``--out``/gpu_check_<size>_<device>.md):
  A. mmict_blip2 training step, OPT-2.7B and FlanT5-XL, B=8, K=0 / K=4 / K=4 with the store
     (the demo clips' frozen ViT features precomputed, ``--store``), s/step and peak memory
  B. batched vs the per-turn reference (table 1 of ``python -m benchmarks``), B=8, K=4
  C. generation at batch 1 and 32, prefix pre-filled once vs repeated per beam (table 5)
  D. aim_opt 0 vs 16 shots, fused vs raw (table 3)
  E. peak memory per model type (weights, training step at B=8, K=4)
Timings synchronize the device around every call (timing.py); peak memory is
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (memory.py).
"""
import argparse
import gc
import os
import sys
import time

import torch

from benchmarks import tables
from benchmarks.memory import peak_bytes
from benchmarks.model_memory import real_shape_config
from benchmarks.run import machine, run_tables
from benchmarks.sizes import SIZES, build_from_config, count_parameters, image_size, model_config
from benchmarks.tables import Table, _batched_loss, _trainable, _training_step, warm_demo_cache
from benchmarks.timing import interleaved, median, median_ratio
from benchmarks.workloads import make_batch
from lavis_mmict.models.feature_cache import DemoFeatureCache

# FlanT5 for the CPU check: the small size's proportions (width 256, 4 + 4 layers) on the tiny T5's tokenizer
SMALL_T5 = dict(llm_model="assets/tiny_t5", llm_config_overrides=dict(
    d_model=256, d_kv=64, d_ff=1024, num_layers=4, num_decoder_layers=4, num_heads=4))
GIB = 2 ** 30


def mmict_configs(size):
    """{name: model config} of the two mmict_blip2 LLM families at ``size``."""
    if size == "real":
        return {"OPT-2.7B": real_shape_config("mmict_blip2", "pretrain_opt2.7b"),
                "FlanT5-XL": real_shape_config("mmict_blip2", "pretrain_flant5xl")}
    return {"OPT (small)": model_config(size), "FlanT5 (small)": model_config(size, **SMALL_T5)}


def allocated(device) -> float:
    """GiB held by tensors now (CUDA allocator; 0 on a CPU, where the memory table reads peaks only)."""
    return torch.cuda.memory_allocated() / GIB if torch.device(device).type == "cuda" else 0.0


def release(device):
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def training_steps(size, device, batch, num_demos, rounds, store, memory):
    """Table A: one training step (forward, backward, AdamW) per LLM family at K=0 / K / K with the
    store; fills ``memory`` {model name: (parameters, weights GiB, peak GiB of the K step)}."""
    frames = SIZES[size].frames
    table = Table(f"A. mmict_blip2 training step, AMP ({size}, {device}, B={batch}, {frames} frames per clip)",
                  ["LLM", "variant", "s/step", "x K=0", "peak memory GiB"])
    for name, cfg in mmict_configs(size).items():
        model = build_from_config(cfg, device)
        weights = allocated(device)
        optimizer = torch.optim.AdamW(_trainable(model), lr=1e-5)
        pixels = image_size(model)
        samples = {0: make_batch(batch, 0, frames, pixels, seed=11, device=device),
                   num_demos: make_batch(batch, num_demos, frames, pixels, seed=11, device=device)}
        no_cache, store_cache = DemoFeatureCache("none"), DemoFeatureCache("memory", memory_items=100000)
        if store:  # what a filled pool feature store gives the model: every demo clip's frozen ViT output
            model.demo_feature_cache = store_cache
            warm_demo_cache(model, samples[num_demos])

        def variant(cache, k):
            step = _training_step(model, optimizer, samples[k], _batched_loss)

            def run():
                model.demo_feature_cache = cache
                step()
            return run

        variants = {"K=0": variant(no_cache, 0), f"K={num_demos}": variant(no_cache, num_demos)}
        if store:
            variants[f"K={num_demos}, store"] = variant(store_cache, num_demos)
        seconds = interleaved(variants, rounds=rounds, device=device)
        for label, run in variants.items():
            peak = (peak_bytes(run, device) / GIB + allocated(device))
            ratio = median_ratio(seconds[label], seconds["K=0"])
            table.rows.append([name, label, median(seconds[label]), ratio, peak])
            if label == f"K={num_demos}":
                memory[f"mmict_blip2 {name}"] = (count_parameters(model), weights, peak)
        if not store:
            table.rows.append([name, f"K={num_demos}, store", "not measured", "", ""])
        model = optimizer = variants = None  # free this family's weights before the next one's
        release(device)
    table.notes.append("AMP: the model's own autocast (LAVIS's maybe_autocast: fp16 around OPT, bf16 around "
                       "FlanT5) on a GPU; fp32 on a CPU. Peak memory: all tensors incl. weights and AdamW state "
                       "(CPU: 0 + the step's resident-memory growth)")
    table.notes.append("store: " + ("the demo clips' frozen ViT outputs precomputed into the model's demo feature "
                                    "cache (what the pool feature store serves), so the step runs no ViT on demos"
                                    if store else "--store none: not measured"))
    return table


def memory_table(size, device, memory, batch, num_demos) -> Table:
    table = Table(f"E. Peak memory per model type ({size}, {device})",
                  ["model", "parameters", "weights GiB", f"peak GiB, training step B={batch}, K={num_demos}"])
    for name, (parameters, weights, peak) in memory.items():
        table.rows.append([name, f"{parameters / 1e9:.2f} B" if parameters >= 1e9 else f"{parameters / 1e6:.1f} M",
                           weights, peak])
    if torch.device(device).type != "cuda":
        table.notes.append("CPU: weights are not read from an allocator (0); peaks are resident-memory growth")
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="real", choices=["small", "real"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=8, help="training batch (tables A, B)")
    parser.add_argument("--shots", type=int, default=4, help="K of the training tables")
    parser.add_argument("--gen-batch", type=int, default=32, help="large generation batch (table C)")
    parser.add_argument("--gen-shots", default="2,16", help="K of the generation rows (table C)")
    parser.add_argument("--aim-shots", type=int, default=16, help="aim_opt shots compared with 0 (table D)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per variant (median)")
    parser.add_argument("--store", default="memory", choices=["memory", "none"],
                        help="memory: time K=4 with the demo clips' ViT features precomputed; none: not measured")
    parser.add_argument("--out", default=os.path.join("output", "gpu_check"), help="folder of the markdown file")
    args = parser.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available (run `--size small --device cpu` for the CPU check)")
    if torch.device(args.device).type == "cpu":
        torch.set_num_threads(1)

    started = time.perf_counter()
    header = f"Machine: {machine(args.device)}\nCommand: python -m benchmarks.gpu_check {' '.join(argv or sys.argv[1:])}\n"
    print(header, flush=True)
    memory = {}
    gen_shots = tuple(int(k) for k in args.gen_shots.split(","))
    runs = [
        lambda: training_steps(args.size, args.device, args.batch, args.shots, args.rounds, args.store == "memory",
                               memory),
        lambda: tables.training_speedup(args.size, args.device, args.rounds, batches=(args.batch,),
                                        shots=(args.shots,)),
        lambda: tables.batched_generation(args.size, args.device, args.rounds, batch=args.gen_batch,
                                          single=min(8, args.gen_batch), shots=gen_shots,
                                          long_batch=min(8, args.gen_batch)),
        lambda: tables.aim_inference(args.size, args.device, args.rounds, shots=(0, args.aim_shots)),
        lambda: memory_table(args.size, args.device, memory, args.batch, args.shots),
    ]
    path = os.path.join(args.out, f"gpu_check_{args.size}_{torch.device(args.device).type}.md")
    return run_tables(runs, header, started, path, after_each=lambda: release(args.device))


if __name__ == "__main__":
    main()
