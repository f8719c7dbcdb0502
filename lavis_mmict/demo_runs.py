"""What the ``make demo`` scripts (``run_scripts/aim/demo.py``, ``run_scripts/mmict/demo.py``)
share: launching ``train.py``/``evaluate.py`` under torchrun, reading a run's metrics back from
LAVIS's ``log.txt``, printing result tables, and writing a run's config (a project YAML with a few
keys changed)."""
import glob
import json
import os
import subprocess
import sys

from omegaconf import OmegaConf


def torchrun(script, cfg_path, options=(), nproc=2, args=()):
    """``python -m torch.distributed.run --standalone --nproc_per_node=<nproc> <script> --cfg-path
    <cfg_path> [args ...] [--options ...]``; raises ``CalledProcessError`` when it fails."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           script, "--cfg-path", cfg_path, *args]
    if options:
        cmd += ["--options", *options]
    subprocess.run(cmd, check=True)


def newest_log(output_dir):
    """``<output_dir>/<job_id>/log.txt`` of the newest job."""
    jobs = sorted(glob.glob(os.path.join(output_dir, "*", "log.txt")), key=os.path.getmtime)
    if not jobs:
        raise SystemExit(f"no log.txt under {output_dir}: the run failed, see its output above")
    return jobs[-1]


def read_metrics(output_dir):
    """Best val score and the test metrics from the newest job's LAVIS log.txt (JSON lines)."""
    log_path = newest_log(output_dir)
    metrics = {}
    with open(log_path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{") and line.endswith("}") and "_agg_metrics" in line:
                record = json.loads(line)
                if "val_agg_metrics" in record:
                    best = max(metrics.get("val_best", float("-inf")), record["val_agg_metrics"])
                    metrics["val_best"] = best
                metrics.update(record)
    return log_path, metrics


def accuracy_types(all_metrics):
    """The question types ``<t>`` of the ``test_acc_<t>`` keys in any of ``all_metrics``, sorted."""
    return sorted({key[len("test_acc_"):] for metrics in all_metrics for key in metrics
                   if key.startswith("test_acc_")})


def percent_cell(metrics, key):
    """``metrics[key]`` with one decimal; nan when the run did not report it."""
    return f"{metrics.get(key, float('nan')):.1f}"


def print_table(header, rows):
    """Print a markdown table: ``header`` and each of ``rows`` are lists of cell strings."""
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")


def write_run_config(base_cfg_path, overrides, path):
    """Write the YAML ``base_cfg_path`` with ``overrides`` (dotted key -> value, e.g.
    ``{"model.demo_format": "text_only"}``) set, to ``path``; returns ``path``."""
    cfg = OmegaConf.load(base_cfg_path)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    OmegaConf.save(cfg, path)
    return path
