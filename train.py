"""Train with LAVIS's config system and runners, on MMICT's registered models, data and tasks.

    python train.py --cfg-path projects/mmict/<x>.yaml [--options key=value ...]
    python -m torch.distributed.run --nproc_per_node=N train.py --cfg-path ... [--options ...]

The flow is LAVIS's ``train.py``: config -> distributed init -> seeds -> logger -> task -> datasets
-> model -> runner (``run.runner``, default ``icl_runner_base``) -> ``runner.train()``. Differences:
distributed init works on CPU (gloo) as well as CUDA (nccl), and all ranks share rank 0's job id
(one output directory). The code is in ``lavis_mmict/cli.py``.

Before anything is built, the names in the config (``model.arch``, ``model.model_type``, the
keys under ``datasets:`` and their ``type``, ``run.task``, ``run.runner``) are checked against
LAVIS's registry: a wrong one is a :class:`ConfigError` that names the key and lists the valid
values; then every other key (unknown ones with the closest valid one, value types,
``run.output_dir``) and the frame size of the datasets' processors against the model's
``image_size`` (docs/configuration.md); after the datasets are built, that every training split
holds one batch. User errors (bad config, checkpoint, weights or media files) end the process with exit
status 1 and one ``train.py: error: ...`` line per rank instead of a traceback; under torchrun the
message is also in torchrun's failure summary. Any other exception keeps its traceback; with
``--debug`` user errors keep theirs too.

Environment:
    LAVIS_MMICT_EXTRA_IMPORTS  comma- or space-separated Python modules to import after
                               ``lavis_mmict``, e.g. your own plugin that registers models or
                               dataset builders named in the config.
"""
from lavis_mmict.commands import train_main as main  # also the console script lavis-mmict-train

if __name__ == "__main__":
    main()
