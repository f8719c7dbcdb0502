"""`make demo`: train and evaluate MMICT and its no-demonstration twin, compare them, then sweep K.

Each run is LAVIS's usual `torch.distributed.run ... train.py --cfg-path <yaml>` with 2 CPU
processes on the tiny offline model and the generated synthetic video-QA set. Then each run's best
checkpoint is evaluated on the test split with K = 0..3 demonstrations (run_scripts/mmict/shot_sweep.py,
evaluation only), giving a table and a plot in output/mmict_demo_sweep/.
"""
import os
import time

from lavis_mmict import sweep
from lavis_mmict.demo_runs import accuracy_types, percent_cell, print_table, read_metrics, torchrun

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SWEEP_SHOTS = [0, 1, 2, 3]
SWEEP_OUTPUT_DIR = "output/mmict_demo_sweep"
RUNS = [
    ("mmict", "projects/mmict/demo.yaml"),
    ("none", "projects/mmict/demo_none.yaml"),
]


def output_dir_of(cfg_path):
    from omegaconf import OmegaConf

    return OmegaConf.load(os.path.join(REPO_ROOT, cfg_path)).run.output_dir


def main():
    os.chdir(REPO_ROOT)
    rows = []
    for demo_format, cfg_path in RUNS:
        print(f"\n=== training demo_format={demo_format} ({cfg_path}) ===", flush=True)
        start = time.time()
        torchrun("train.py", cfg_path)
        log_path, metrics = read_metrics(output_dir_of(cfg_path))
        rows.append((demo_format, metrics, time.time() - start, log_path))

    print("\nMMICT demo: tiny offline BLIP-2 OPT, synthetic video QA, 2 CPU processes")
    types = accuracy_types(metrics for _, metrics, _, _ in rows)
    header = ["demo_format", "val acc (best)", "test acc"] + [f"test {t}" for t in types] + ["time"]
    print_table(header, [
        [demo_format, percent_cell(metrics, "val_best"), percent_cell(metrics, "test_agg_metrics")]
        + [percent_cell(metrics, f"test_acc_{t}") for t in types] + [f"{seconds:.0f} s"]
        for demo_format, metrics, seconds, _ in rows
    ])
    for demo_format, _, _, log_path in rows:
        print(f"{demo_format}: {log_path}")

    # K sweep of both trained models, evaluation only: MMICT needs its demos, `none` ignores them
    start = time.time()
    sweep_args = ["--shots", *map(str, SWEEP_SHOTS), "--output-dir", SWEEP_OUTPUT_DIR, "--nproc", "2",
                  "--title", "MMICT demo: test accuracy vs K"]
    for (demo_format, cfg_path), (_, _, _, log_path) in zip(RUNS, rows):
        sweep_args += ["--run", demo_format, cfg_path, os.path.join(os.path.dirname(log_path), "checkpoint_best.pth")]
    sweep.main(sweep_args)
    print(f"(sweep: {time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
