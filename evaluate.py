"""Evaluate with LAVIS's config system and runners (``run.test_splits``), no training.

    python evaluate.py --cfg-path projects/mmict/<x>.yaml [--options key=value ...]
    python -m torch.distributed.run --nproc_per_node=N evaluate.py --cfg-path ... [--options ...]

    # shot sweep: the same weights at several K, for one or more demo formats
    python -m torch.distributed.run --nproc_per_node=N evaluate.py --cfg-path ... \
        --shots 0 1 2 4 8 [--demo-formats mmict none] [--options run.eval_ckpt_path=...]

Same set-up as ``train.py`` (and the same ``LAVIS_MMICT_EXTRA_IMPORTS``), then
``runner.evaluate(skip_reload=True)``: the model is evaluated with the weights its config gives it,
or, when ``run.eval_ckpt_path`` is set, with the trainable parameters of that runner checkpoint
(a path, a URL, or ``auto``: the newest ``checkpoint_*.pth`` under ``<run.output_dir>/*/``).
Metrics go to ``<output_dir>/<job_id>/log.txt`` (``<split>_agg_metrics``...) and ``evaluate.txt``
and are printed as a table. The code is in ``lavis_mmict/cli.py``.

``--shots``: for each demo format (``--demo-formats``, default the config's ``model.demo_format``)
the model is built once and the checkpoint loaded once; for each K every dataset's
``demonstrations.num`` is set to K and the test splits are evaluated. Besides the usual log lines
(plus one ``{"demo_format", "shots", "<split>_<metric>"...}`` line per K in log.txt), the job
directory gets ``results.json``, ``results.md`` (K table) and ``results.png`` (metric vs K, one
line per format); ``--metric`` picks the reported metric (default ``agg_metrics``).
"""
from lavis_mmict.commands import evaluate_main as main  # also the console script lavis-mmict-evaluate

if __name__ == "__main__":
    main()
