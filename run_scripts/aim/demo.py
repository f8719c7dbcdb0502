"""`make demo`, AIM part: a tiny frozen base that learns in context from raw demonstrations, AIM's
projection trained on web pairs only, then zero-shot / raw / fused demonstrations at K = 0..4 on the
same frozen weights.

Steps (each LAVIS's usual `torch.distributed.run ... train.py|evaluate.py --cfg-path <yaml>`, 2 CPU
processes; :func:`demo_steps` lists them):
  1. write 8 small webdataset shards of synthetic image-text "pages" (run_scripts/aim/make_web_shards.py);
  2. projects/aim/demo_base.yaml: train the random tiny BLIP-2 OPT (32 query tokens, as BLIP-2) as a
     raw-demonstration ICL model on the evaluation task's train split (synthetic video QA, raw
     same-clip demonstrations), a stand-in for LAVIS's pre-trained checkpoint (real model types
     skip this); it is frozen from here on;
  3. projects/aim/pretrain_webdataset.yaml: AIM, base frozen, only the projection (+ separator)
     trains, on the web shards (not the evaluation task), with the demo bank;
  4. projects/aim/demo_eval.yaml: `evaluate.py --shots 0 1 2 3 4 --demo-formats none raw fused` on
     the synthetic video QA test split: the K table, results.png (accuracy vs K) and a summary of
     how much of raw's gain over zero-shot fused recovers at K = 4, and at what LLM cost.
"""
import glob
import json
import os
import subprocess
import sys
import time

from omegaconf import OmegaConf

from lavis_mmict.demo_runs import newest_log, print_table, torchrun
from lavis_mmict.reports import RESULTS_JSON, read_sweep_rows, shots_table

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARDS = "output/cache/aim_web_shards"
BASE_CONFIG = "projects/aim/demo_base.yaml"
AIM_CONFIG = "projects/aim/pretrain_webdataset.yaml"
EVAL_CONFIG = "projects/aim/demo_eval.yaml"
SHOTS = [0, 1, 2, 3, 4]
FORMATS = ["none", "raw", "fused"]


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


def num_query_token(cfg_path=BASE_CONFIG):
    """Visual tokens per clip of the demo's base (its config's model.num_query_token)."""
    return int(OmegaConf.load(cfg_path).model.num_query_token)


def demo_steps(base_checkpoint, aim_checkpoint):
    """The demo's three runs, in order: dicts with ``name``, ``script``, ``cfg_path``, ``args``
    (before ``--options``) and ``options``. The projection is trained and evaluated on the base
    trained in step 1 (``model.pretrained``), with the base's number of query tokens."""
    base = [f"model.pretrained={base_checkpoint}", f"model.num_query_token={num_query_token()}"]
    return [
        {"name": "base", "script": "train.py", "cfg_path": BASE_CONFIG, "args": [], "options": []},
        {"name": "aim", "script": "train.py", "cfg_path": AIM_CONFIG, "args": [], "options": base},
        {"name": "eval", "script": "evaluate.py", "cfg_path": EVAL_CONFIG,
         "args": ["--shots", *map(str, SHOTS), "--demo-formats", *FORMATS],
         "options": base + [f"run.eval_ckpt_path={aim_checkpoint}"]},
    ]


def llm_positions_per_demo(visual_tokens, cfg_path=EVAL_CONFIG):
    """Mean LLM positions one demonstration of the eval set takes: raw (N visual + </s> + text) vs
    fused (text only), for the tiny model (N = ``visual_tokens``), demo texts written with the eval
    config's ``demonstrations.template`` and tokenized as the model does (after ``</s>``)."""
    from transformers import AutoTokenizer

    from lavis_mmict.backbones import resolve_asset_path
    from lavis_mmict.datasets.demonstrations import format_demo_text

    dataset = OmegaConf.load(cfg_path).datasets.synthetic_videoqa_icl
    tokenizer = AutoTokenizer.from_pretrained(resolve_asset_path("assets/tiny_opt"), use_fast=False)
    with open(os.path.join(dataset.build_info.storage, "annotations", "test.json")) as f:
        records = json.load(f)
    lengths = [len(tokenizer(format_demo_text(dataset.demonstrations.template, r)).input_ids) - 1  # - </s>
               for r in records]
    text = sum(lengths) / len(lengths)
    return {"none": 0.0, "raw": visual_tokens + 1 + text, "fused": text}


def recovery_rows(rows, positions, shots=SHOTS[-1], split="test", metric="agg_metrics"):
    """Summary at K = ``shots``: per format its score, gain over ``none`` and the share of raw's gain
    it recovers, and its LLM positions per demonstration (and as a share of raw's)."""
    score = {row["demo_format"]: row["metrics"][metric] for row in rows
             if row["shots"] == shots and row["split"] == split}
    raw_gain = score["raw"] - score["none"]
    table = []
    for demo_format in FORMATS:
        gain = score[demo_format] - score["none"]
        recovered = f"{100 * gain / raw_gain:.0f}%" if raw_gain > 0 else "-"
        table.append([demo_format, f"{score[demo_format]:.1f}", f"{gain:+.1f}", recovered,
                      f"{positions[demo_format]:.1f}", f"{positions[demo_format] / positions['raw']:.2f}"])
    return table


def main():
    os.chdir(REPO_ROOT)
    timings = {}
    print("\n=== AIM: writing web shards ===", flush=True)
    subprocess.run([sys.executable, "run_scripts/aim/make_web_shards.py", "--out", SHARDS,
                    "--shards", "8", "--pages", "32"], check=True)

    base_step, _, _ = demo_steps("<base>", "<aim>")
    print("\n=== AIM 1/3: tiny base model, raw demonstrations on the eval task's train split, then frozen ===",
          flush=True)
    start = time.time()
    torchrun(base_step["script"], base_step["cfg_path"], base_step["options"])
    base_job = newest_job(OmegaConf.load(BASE_CONFIG).run.output_dir)
    base_checkpoint = os.path.join(base_job, "checkpoint_best.pth")
    timings["base"] = time.time() - start

    _, aim_step, _ = demo_steps(base_checkpoint, "<aim>")
    print("\n=== AIM 2/3: training the projection on web pairs (base frozen) ===", flush=True)
    start = time.time()
    torchrun(aim_step["script"], aim_step["cfg_path"], aim_step["options"])
    aim_job = newest_job(OmegaConf.load(AIM_CONFIG).run.output_dir)
    aim_checkpoint = last_checkpoint(aim_job)
    timings["aim"] = time.time() - start

    _, _, eval_step = demo_steps(base_checkpoint, aim_checkpoint)
    print(f"\n=== AIM 3/3: K = {SHOTS[0]}..{SHOTS[-1]}, demo_format {' / '.join(FORMATS)} ===", flush=True)
    start = time.time()
    torchrun(eval_step["script"], eval_step["cfg_path"], eval_step["options"], args=eval_step["args"])
    eval_job = newest_job(OmegaConf.load(EVAL_CONFIG).run.output_dir)
    timings["eval"] = time.time() - start

    rows = read_sweep_rows(os.path.join(eval_job, RESULTS_JSON))
    positions = llm_positions_per_demo(num_query_token())
    print("\nAIM demo: tiny offline BLIP-2 OPT (frozen), synthetic video QA test split, same-clip demos, "
          "2 CPU processes")
    print(f"base: {base_checkpoint} (train loss {final_train_loss(base_job)}, {timings['base']:.0f} s); "
          f"AIM projection: {aim_checkpoint} (train loss {final_train_loss(aim_job)}, {timings['aim']:.0f} s); "
          f"evaluation {timings['eval']:.0f} s")
    print(shots_table(rows, "test"))
    print(f"At K = {SHOTS[-1]}:")
    print_table(["demo_format", "test acc", "gain over none", "of raw's gain", "LLM positions / demo",
                 "/ raw's"], recovery_rows(rows, positions))
    print(f"Plot: {os.path.join(eval_job, 'results.png')}")


if __name__ == "__main__":
    main()
