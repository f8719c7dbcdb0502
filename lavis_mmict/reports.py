"""Shot-sweep reports: one metric per (demo format, K), as ``results.json``, a markdown table and
a PNG plot (metric vs K, one line per format).

A sweep is a list of rows::

    {"label": "mmict", "demo_format": "mmict", "shots": 2, "split": "test",
     "metrics": {"agg_metrics": 61.2, "acc": 61.2, ...}, "checkpoint": "...", "cfg_path": "...",
     "transductive": false}

``label`` names a line (the demo format, unless two runs share one); ``transductive`` (optional):
the demonstrations came from the evaluated split itself (``pool: self``), which the tables say
next to the label. :func:`write_sweep_report` writes everything (atomically, and again after
every evaluation of a sweep, ``complete`` false until the last), :func:`read_sweep_rows` reads
``results.json`` back (to merge sweeps).
"""
import json
import math
import os

from lavis_mmict.atomic import atomic_output, write_json_atomic

__all__ = [
    "RESULTS_JSON",
    "RESULTS_MD",
    "RESULTS_PNG",
    "format_value",
    "is_percent_metric",
    "markdown_report",
    "plot_sweep",
    "read_sweep_rows",
    "shots_table",
    "write_sweep_report",
]

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"
DEFAULT_METRIC = "agg_metrics"
TRANSDUCTIVE_NOTE = ("(transductive): the demonstrations come from the evaluated split itself (pool: self), "
                     "not comparable to a score with demonstrations from the training split")
INCOMPLETE_NOTE = "Incomplete: the sweep stopped before every (demo format, K) was evaluated."


def is_percent_metric(name, metrics):
    """VQA accuracies (``acc``, ``acc_<type>`` and the ``agg_metrics`` beside them) are percents."""
    return name.startswith("acc") or (name == "agg_metrics" and "acc" in metrics)


def format_value(value, percent=False):
    """Numbers for tables: percents with 1 decimal, other scores (BLEU, CIDEr...) with 4."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.1f}" if percent else f"{value:.4f}"


def _cell(metrics, name):
    return format_value(metrics.get(name), is_percent_metric(name, metrics))


def _ordered(values):
    seen = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def _labels(rows):
    return _ordered(row["label"] for row in rows)


def _splits(rows):
    return _ordered(row["split"] for row in rows)


def _shots(rows):
    return sorted({int(row["shots"]) for row in rows})


def _lookup(rows):
    return {(row["label"], row["split"], int(row["shots"])): row["metrics"] for row in rows}


def _label_cell(label, transductive):
    return f"{label} (transductive)" if transductive else label


def _name_column(rows):
    """The first column's header and each label's cell: the label, and whether the query's question
    went through the Q-Former (rows' ``query_text_in_qformer``, mmict_blip2) when the rows say."""
    flags = {row["label"]: row.get("query_text_in_qformer") for row in rows}
    if all(flag is None for flag in flags.values()):
        return "demo_format", {label: label for label in flags}
    marks = {True: "yes", False: "no", None: "-"}
    return "demo_format (question in Q-Former)", {label: f"{label} ({marks[flag]})" for label, flag in flags.items()}


def shots_table(rows, split, metric=DEFAULT_METRIC):
    """Markdown table for one split: one row per label, one column per K (and the transductive
    note when some label's demonstrations came from the split itself)."""
    shots = _shots(rows)
    values = _lookup(rows)
    header, names = _name_column(rows)
    lines = [f"| {header} | " + " | ".join(f"K={k}" for k in shots) + " |",
             "|---|" + "---|" * len(shots)]
    transductive = {row["label"] for row in rows if row["split"] == split and row.get("transductive")}
    for label in _labels(rows):
        cells = [_cell(values.get((label, split, k), {}), metric) for k in shots]
        lines.append(f"| {_label_cell(names[label], label in transductive)} | " + " | ".join(cells) + " |")
    if transductive:
        lines += ["", TRANSDUCTIVE_NOTE]
    return "\n".join(lines)


def _all_metrics_table(rows):
    names = _ordered(name for row in rows for name in row["metrics"])
    header, labels = _name_column(rows)
    lines = [f"| {header} | split | K | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for row in sorted(rows, key=lambda r: (_labels(rows).index(r["label"]), r["split"], int(r["shots"]))):
        cells = [_cell(row["metrics"], name) for name in names]
        label = _label_cell(labels[row["label"]], row.get("transductive"))
        lines.append(f"| {label} | {row['split']} | {row['shots']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(rows, metric=DEFAULT_METRIC, title="Shot sweep", complete=True):
    """The whole markdown report: per split a K table of ``metric``, then every metric."""
    parts = [f"# {title}", ""] + ([] if complete else [INCOMPLETE_NOTE, ""])
    for split in _splits(rows):
        parts += [f"## {split}: {metric} by number of demonstrations K", "", shots_table(rows, split, metric), ""]
    parts += ["## All metrics", "", _all_metrics_table(rows), ""]
    sources = _ordered(
        (row["label"], row.get("checkpoint") or "config weights", row.get("cfg_path") or "") for row in rows
    )
    parts += ["Runs: " + "; ".join(f"{label}: {cfg} ({ckpt})" for label, ckpt, cfg in sources), ""]
    return "\n".join(parts)


def plot_sweep(rows, path, metric=DEFAULT_METRIC, title="Shot sweep"):
    """PNG: ``metric`` vs K, one line per label, one panel per split (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits, shots, values = _splits(rows), _shots(rows), _lookup(rows)
    figure, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4), squeeze=False)
    for axis, split in zip(axes[0], splits):
        for label in _labels(rows):
            points = [(k, values[(label, split, k)].get(metric)) for k in shots if (label, split, k) in values]
            points = [(k, v) for k, v in points if isinstance(v, (int, float))]
            if points:
                axis.plot([k for k, _ in points], [v for _, v in points], marker="o", label=label)
        axis.set_xticks(shots)
        axis.set_xlabel("demonstrations per query (K)")
        axis.set_ylabel(metric)
        axis.set_title(f"{title}: {split}")
        axis.grid(True, alpha=0.3)
        axis.legend(title="demo_format")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_sweep_report(rows, output_dir, metric=DEFAULT_METRIC, title="Shot sweep", complete=True):
    """Write ``results.json``, ``results.md`` and ``results.png`` into ``output_dir``, each
    atomically (a reader never sees half a file); ``complete=False``: the sweep is still running
    or stopped early. Returns ``{"json": path, "markdown": path, "png": path, "table": text}``."""
    if not rows:
        raise ValueError("No sweep results to report")
    os.makedirs(output_dir, exist_ok=True)
    paths = {name: os.path.join(output_dir, file) for name, file in
             (("json", RESULTS_JSON), ("markdown", RESULTS_MD), ("png", RESULTS_PNG))}
    write_json_atomic(paths["json"], {"metric": metric, "title": title, "complete": bool(complete), "rows": rows},
                      indent=1)
    with atomic_output(paths["markdown"]) as temporary, open(temporary, "w") as f:
        f.write(markdown_report(rows, metric, title, complete))
    with atomic_output(paths["png"], keep_extension=True) as temporary:  # savefig picks the format by it
        plot_sweep(rows, temporary, metric, title)
    paths["table"] = "\n\n".join(shots_table(rows, split, metric) for split in _splits(rows))
    return paths


def read_sweep_rows(path):
    """The rows of a ``results.json`` written by :func:`write_sweep_report`."""
    with open(path) as f:
        content = json.load(f)
    if not isinstance(content, dict) or not isinstance(content.get("rows"), list):
        raise ValueError(f"{path} is not a shot-sweep results.json (no 'rows' list)")
    for index, row in enumerate(content["rows"]):
        missing = [key for key in ("label", "shots", "split", "metrics") if key not in row]
        if missing:
            raise ValueError(f"{path}: row {index} is missing {missing}")
    return content["rows"]
