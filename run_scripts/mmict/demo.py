"""`make demo`, MMICT part: train every demonstration format on the same task, compare them in one
table, then sweep K for each.

The formats (docs/models.md): ``mmict`` (each demo's M-Hub text features), ``vanilla_ict`` (each
demo's visual query tokens + its raw text), ``text_only`` (each demo's raw text) and ``none`` (no
demos, plain BLIP-2 fine-tuning). Each is LAVIS's usual `torch.distributed.run ... train.py
--cfg-path <yaml>` with 2 CPU processes on the tiny offline model and the generated synthetic
video-QA set, from projects/mmict/demo.yaml (demo_none.yaml for ``none``) with only
``model.demo_format`` and ``run.output_dir`` changed; that config is written to
``<output-root>/mmict_demo_configs/<format>.yaml``, so training and the sweep read the same file.
Every other model key keeps its default for the format. Then each run's best checkpoint is
evaluated on the test split with K = 0..3 demonstrations (run_scripts/mmict/shot_sweep.py,
evaluation only): a table and a plot in ``<output-root>/mmict_demo_sweep/``.

    python run_scripts/mmict/demo.py [--formats mmict none] [--options run.max_epoch=2 ...]
"""
import argparse
import os
import time

from lavis_mmict import sweep
from lavis_mmict.demo_runs import (
    accuracy_types, percent_cell, print_table, read_metrics, torchrun, write_run_config,
)
from lavis_mmict.models.mmict_blip2 import DEMO_FORMATS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SWEEP_SHOTS = [0, 1, 2, 3]
# `none` has its own config: demonstrations.num 0, so no demo clip is loaded for a model that ignores it.
BASE_CONFIGS = {"none": "projects/mmict/demo_none.yaml"}
DEFAULT_BASE_CONFIG = "projects/mmict/demo.yaml"


def run_output_dir(output_root, demo_format):
    """output/mmict_demo for mmict, output/mmict_demo_<format> for the others."""
    return os.path.join(output_root, "mmict_demo" + ("" if demo_format == "mmict" else f"_{demo_format}"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", nargs="+", default=list(DEMO_FORMATS), choices=DEMO_FORMATS,
                        help="demo formats to train, in table order (default: all four)")
    parser.add_argument("--output-root", default="output", help="runs go to <root>/mmict_demo[_<format>]")
    parser.add_argument("--options", nargs="+", default=[],
                        help="key=value overrides for every training and evaluation (e.g. run.max_epoch=2)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    os.chdir(REPO_ROOT)
    begin = time.time()
    runs = []  # (demo_format, config path, metrics, seconds, log path)
    for demo_format in args.formats:
        base = BASE_CONFIGS.get(demo_format, DEFAULT_BASE_CONFIG)
        overrides = {"model.demo_format": demo_format, "run.output_dir": run_output_dir(args.output_root, demo_format)}
        cfg_path = write_run_config(
            base, overrides, os.path.join(args.output_root, "mmict_demo_configs", f"{demo_format}.yaml"))
        print(f"\n=== training demo_format={demo_format} ({cfg_path}: {base} with "
              + " ".join(f"{k}={v}" for k, v in overrides.items()) + ") ===", flush=True)
        start = time.time()
        torchrun("train.py", cfg_path, args.options)
        log_path, metrics = read_metrics(overrides["run.output_dir"])
        runs.append((demo_format, cfg_path, metrics, time.time() - start, log_path))

    print("\nMMICT demo: tiny offline BLIP-2 OPT, synthetic video QA, 2 CPU processes")
    types = accuracy_types(metrics for _, _, metrics, _, _ in runs)
    header = ["demo_format", "val acc (best)", "test acc"] + [f"test {t}" for t in types] + ["time"]
    print_table(header, [
        [demo_format, percent_cell(metrics, "val_best"), percent_cell(metrics, "test_agg_metrics")]
        + [percent_cell(metrics, f"test_acc_{t}") for t in types] + [f"{seconds:.0f} s"]
        for demo_format, _, metrics, seconds, _ in runs
    ])
    for demo_format, _, _, _, log_path in runs:
        print(f"{demo_format}: {log_path}")

    # K sweep of every trained model, evaluation only (`none` ignores demonstrations: a flat line)
    start = time.time()
    sweep_args = ["--shots", *map(str, SWEEP_SHOTS), "--output-dir", os.path.join(args.output_root, "mmict_demo_sweep"),
                  "--nproc", "2", "--title", "MMICT demo: test accuracy vs K"]
    if args.options:
        sweep_args += ["--options", *args.options]
    for demo_format, cfg_path, _, _, log_path in runs:
        sweep_args += ["--run", demo_format, cfg_path, os.path.join(os.path.dirname(log_path), "checkpoint_best.pth")]
    sweep.main(sweep_args)
    print(f"(sweep: {time.time() - start:.0f} s; MMICT part of the demo: {time.time() - begin:.0f} s)")


if __name__ == "__main__":
    main()
