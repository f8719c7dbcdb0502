"""`make demo`: train and evaluate MMICT and its no-demonstration twin, compare them, then sweep K.

Each run is LAVIS's usual `torch.distributed.run ... train.py --cfg-path <yaml>` with 2 CPU
processes on the tiny offline model and the generated synthetic video-QA set. Then each run's best
checkpoint is evaluated on the test split with K = 0..3 demonstrations (run_scripts/mmict/shot_sweep.py,
evaluation only), giving a table and a plot in output/mmict_demo_sweep/.
"""
import glob
import json
import os
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shot_sweep  # noqa: E402

SWEEP_SHOTS = [0, 1, 2, 3]
SWEEP_OUTPUT_DIR = "output/mmict_demo_sweep"
RUNS = [
    ("mmict", "projects/mmict/demo.yaml"),
    ("none", "projects/mmict/demo_none.yaml"),
]


def read_metrics(output_dir):
    """Best val score and the test metrics from the newest job's LAVIS log.txt (JSON lines)."""
    jobs = sorted(glob.glob(os.path.join(output_dir, "*", "log.txt")), key=os.path.getmtime)
    if not jobs:
        raise SystemExit(f"no log.txt under {output_dir}: the run failed, see its output above")
    metrics = {}
    with open(jobs[-1]) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{") and line.endswith("}") and "_agg_metrics" in line:
                record = json.loads(line)
                if "val_agg_metrics" in record:
                    best = max(metrics.get("val_best", float("-inf")), record["val_agg_metrics"])
                    metrics["val_best"] = best
                metrics.update(record)
    return jobs[-1], metrics


def output_dir_of(cfg_path):
    from omegaconf import OmegaConf

    return OmegaConf.load(os.path.join(REPO_ROOT, cfg_path)).run.output_dir


def main():
    os.chdir(REPO_ROOT)
    rows = []
    for demo_format, cfg_path in RUNS:
        print(f"\n=== training demo_format={demo_format} ({cfg_path}) ===", flush=True)
        start = time.time()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "train.py", "--cfg-path", cfg_path]
        subprocess.run(cmd, check=True)
        log_path, metrics = read_metrics(output_dir_of(cfg_path))
        rows.append((demo_format, metrics, time.time() - start, log_path))

    print("\nMMICT demo: tiny offline BLIP-2 OPT, synthetic video QA, 2 CPU processes")
    types = sorted({k[len("test_acc_"):] for _, m, _, _ in rows for k in m if k.startswith("test_acc_")})
    header = ["demo_format", "val acc (best)", "test acc"] + [f"test {t}" for t in types] + ["time"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for demo_format, metrics, seconds, _ in rows:
        cells = [demo_format, f"{metrics.get('val_best', float('nan')):.1f}",
                 f"{metrics.get('test_agg_metrics', float('nan')):.1f}"]
        cells += [f"{metrics.get('test_acc_' + t, float('nan')):.1f}" for t in types]
        cells.append(f"{seconds:.0f} s")
        print("| " + " | ".join(cells) + " |")
    for demo_format, _, _, log_path in rows:
        print(f"{demo_format}: {log_path}")

    # K sweep of both trained models, evaluation only: MMICT needs its demos, `none` ignores them
    start = time.time()
    sweep_args = ["--shots", *map(str, SWEEP_SHOTS), "--output-dir", SWEEP_OUTPUT_DIR, "--nproc", "2",
                  "--title", "MMICT demo: test accuracy vs K"]
    for (demo_format, cfg_path), (_, _, _, log_path) in zip(RUNS, rows):
        sweep_args += ["--run", demo_format, cfg_path, os.path.join(os.path.dirname(log_path), "checkpoint_best.pth")]
    shot_sweep.main(sweep_args)
    print(f"(sweep: {time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
