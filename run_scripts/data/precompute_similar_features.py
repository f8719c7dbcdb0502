"""Precompute the ``similar`` strategy's visual features of an experiment before a job.

    python run_scripts/data/precompute_similar_features.py --cfg-path projects/mmict/<x>.yaml [--options ...]
    python -m torch.distributed.run --nproc_per_node=N run_scripts/data/precompute_similar_features.py --cfg-path ...

Builds the config's datasets exactly as train.py does: every split whose ``demonstrations.strategy``
is ``similar`` computes the features of its (and its pool's) clips, each rank encoding its share in
batches of ``demonstrations.encoder.batch_size`` read by ``demonstrations.encoder.num_workers``
DataLoader processes, with a progress bar, into ``demonstrations.feature_cache``
(datasets/similarity.py). The job then finds them there and encodes nothing; files already there
for the same encoder, frames and data are reused.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from lavis import tasks  # noqa: E402

from lavis_mmict.cli import argument_parser, run_main, setup_run  # noqa: E402
from lavis_mmict.models.pool_store import icl_datasets_of  # noqa: E402


def precompute(args):
    cfg, _ = setup_run(args)
    datasets = tasks.setup_task(cfg).build_datasets(cfg)  # ICLDataset computes (or finds) the features
    similar = [d.name for d in icl_datasets_of(datasets) if d.demo_config.strategy == "similar"]
    print(f"similar features ready for {similar or 'no split (no split uses strategy: similar)'}", flush=True)


def main(argv=None):
    args = argument_parser("Precompute similar-demonstration features",
                           "datasets.msrvtt_qa_icl.demonstrations.encoder.batch_size=64").parse_args(argv)
    run_main("precompute_similar_features.py", lambda: precompute(args))


if __name__ == "__main__":
    main()
