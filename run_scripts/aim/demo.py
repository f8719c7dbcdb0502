"""`make demo`, AIM part: train the tiny aim_opt's projection on generated web shards and compare
its few-shot result with raw multimodal demonstrations and zero-shot, on the same frozen weights.

Steps (each LAVIS's usual `torch.distributed.run ... train.py|evaluate.py --cfg-path <yaml>`, 2 CPU
processes):
  1. write 8 small webdataset shards of synthetic image-text "pages" (run_scripts/aim/make_web_shards.py);
  2. projects/aim/demo_base.yaml: train the random tiny BLIP-2 OPT as a raw-demonstration ICL model,
     a stand-in for LAVIS's pre-trained checkpoint (real model types skip this);
  3. projects/aim/pretrain_webdataset.yaml: AIM, everything frozen, only the projection (+ separator)
     trains, with the demo bank;
  4. projects/aim/demo_eval.yaml: synthetic video QA test split, K = 3 same-clip demonstrations,
     with demo_format none / raw / fused.
"""
import glob
import json
import os
import subprocess
import sys
import time

from lavis_mmict.demo_runs import accuracy_types, newest_log, percent_cell, print_table, read_metrics, torchrun

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARDS = "output/cache/aim_web_shards"


def newest_job(output_dir):
    return os.path.dirname(newest_log(output_dir))


def last_checkpoint(job_dir):
    checkpoints = glob.glob(os.path.join(job_dir, "checkpoint_[0-9]*.pth"))
    if not checkpoints:
        raise SystemExit(f"no checkpoint_<iters>.pth in {job_dir}")
    return max(checkpoints, key=lambda p: int(os.path.basename(p)[len("checkpoint_"):-len(".pth")]))


def final_train_loss(job_dir):
    loss = None
    with open(os.path.join(job_dir, "log.txt")) as f:
        for line in f:
            if line.startswith("{") and '"train_loss"' in line:
                loss = float(json.loads(line)["train_loss"])
    return loss


def llm_positions_per_demo():
    """Mean LLM positions one demonstration of the eval set takes: raw (N visual + </s> + text) vs
    fused (text only), for the tiny model (N = 8)."""
    from transformers import AutoTokenizer

    from lavis_mmict.backbones import resolve_asset_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_asset_path("assets/tiny_opt"), use_fast=False)
    with open(os.path.join("output/cache/synthetic_videoqa_icl/annotations/test.json")) as f:
        records = json.load(f)
    lengths = [len(tokenizer(f"Question: {r['question']} Short answer: {r['answer']}",
                             add_special_tokens=False).input_ids) for r in records]
    text = sum(lengths) / len(lengths)
    return {"none": 0.0, "raw": 8 + 1 + text, "fused": text}


def main():
    os.chdir(REPO_ROOT)
    timings = {}
    print("\n=== AIM: writing web shards ===", flush=True)
    subprocess.run([sys.executable, "run_scripts/aim/make_web_shards.py", "--out", SHARDS,
                    "--shards", "8", "--pages", "32"], check=True)

    print("\n=== AIM 1/3: tiny base model (stand-in for LAVIS's BLIP-2 checkpoint) ===", flush=True)
    start = time.time()
    torchrun("train.py", "projects/aim/demo_base.yaml")
    base_job = newest_job("output/aim_demo/base")
    base_checkpoint = last_checkpoint(base_job)
    timings["base"] = time.time() - start

    print("\n=== AIM 2/3: training the projection (everything else frozen) ===", flush=True)
    start = time.time()
    torchrun("train.py", "projects/aim/pretrain_webdataset.yaml", [f"model.pretrained={base_checkpoint}"])
    aim_job = newest_job("output/aim_demo/pretrain")
    aim_checkpoint = last_checkpoint(aim_job)
    timings["aim"] = time.time() - start

    rows = []
    for mode in ("none", "raw", "fused"):
        print(f"\n=== AIM 3/3: few-shot evaluation, demo_format={mode} ===", flush=True)
        start = time.time()
        options = [f"model.pretrained={base_checkpoint}", f"model.demo_format={mode}"]
        if mode == "fused":
            options.append(f"run.eval_ckpt_path={aim_checkpoint}")
        torchrun("evaluate.py", "projects/aim/demo_eval.yaml", options)
        _, metrics = read_metrics("output/aim_demo/eval")
        rows.append((mode, metrics, time.time() - start))

    positions = llm_positions_per_demo()
    print("\nAIM demo: tiny offline BLIP-2 OPT (frozen), synthetic video QA test split, K = 3 same-clip demos, "
          "2 CPU processes")
    print(f"base: {base_checkpoint} (train loss {final_train_loss(base_job)}, {timings['base']:.0f} s); "
          f"AIM projection: {aim_checkpoint} (train loss {final_train_loss(aim_job)}, {timings['aim']:.0f} s)")
    types = accuracy_types(metrics for _, metrics, _ in rows)
    header = ["demo_format", "test acc"] + [f"test {t}" for t in types] + ["LLM positions / demo", "eval time"]
    print_table(header, [
        [mode, percent_cell(metrics, "test_agg_metrics")] + [percent_cell(metrics, f"test_acc_{t}") for t in types]
        + [f"{positions[mode]:.1f}", f"{seconds:.0f} s"]
        for mode, metrics, seconds in rows
    ])


if __name__ == "__main__":
    main()
