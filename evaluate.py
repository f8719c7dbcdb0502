"""Evaluate with LAVIS's config system and runners (``run.test_splits``), no training.

    python evaluate.py --cfg-path projects/mmict/<x>.yaml [--options key=value ...]
    python -m torch.distributed.run --nproc_per_node=N evaluate.py --cfg-path ... [--options ...]

Same set-up as ``train.py`` (and the same ``LAVIS_MMICT_EXTRA_IMPORTS``), then
``runner.evaluate(skip_reload=True)``: the model is evaluated with the weights its config gives it,
or, when ``run.eval_ckpt_path`` is set, with the trainable parameters of that runner checkpoint
(a path, a URL, or ``auto``: the newest ``checkpoint_*.pth`` under ``<run.output_dir>/*/``).
Metrics go to ``<output_dir>/<job_id>/log.txt`` (``<split>_agg_metrics``...) and ``evaluate.txt``.
"""
import json
import logging

from lavis.common.dist_utils import is_main_process
from lavis_mmict.dist import destroy_distributed
from train import build_runner, parse_args


def main():
    args = parse_args("Evaluation")
    try:
        runner = build_runner(args)
        checkpoint = runner.config.run_cfg.get("eval_ckpt_path", None)
        if checkpoint:
            runner.load_model_weights(checkpoint)
        test_logs = runner.evaluate(skip_reload=True)
        if is_main_process():
            logging.info("Evaluation results: %s", json.dumps(test_logs))
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main()
