"""Shot sweep over several trained runs: one table and one plot, one line per run.

    python run_scripts/mmict/shot_sweep.py --shots 0 1 2 4 8 --output-dir output/sweep \
        --run mmict projects/mmict/demo.yaml output/mmict_demo/<job>/checkpoint_best.pth \
        --run none  projects/mmict/demo_none.yaml auto \
        [--nproc 2] [--metric agg_metrics] [--options key=value ...]

Each ``--run LABEL CFG [CHECKPOINT]`` is evaluated by
``torch.distributed.run --nproc_per_node=N evaluate.py --cfg-path CFG --shots ...`` (its own model
and demo format, the checkpoint's trainable weights; ``auto`` = ``checkpoint_best.pth`` of the newest
job under the config's ``run.output_dir``; none = the config's weights), with
``run.output_dir=<output-dir>/<LABEL>``. The rows of every run's ``results.json`` are merged into
``<output-dir>/results.json``, ``results.md`` and ``results.png``, and the K table is printed.
``--options`` apply to every run. The code is :mod:`lavis_mmict.sweep`.
"""
from lavis_mmict.sweep import main

if __name__ == "__main__":
    main()
