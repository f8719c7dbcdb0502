"""Fill the pool feature store (``model.demo_feature_store``) of an experiment before training.

    python run_scripts/data/fill_feature_store.py --cfg-path projects/mmict/<x>.yaml \
        [--batch-size 32] [--workers 4] [--options key=value ...]
    python -m torch.distributed.run --nproc_per_node=N run_scripts/data/fill_feature_store.py --cfg-path ...

Builds the config's datasets and model exactly as train.py does (same ViT weights, device and
precision, hence the same encoder fingerprint), then encodes every demonstration clip of every
split's pool that the store lacks: each rank its share, in batches read by ``--workers`` DataLoader
processes, with a progress bar; the ranks' part files become one store (models/pool_store.py).
Run again after adding clips: only new ones are encoded. Then train with
``model.demo_feature_store: use`` (or let training fill it at start-up with ``fill``).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from lavis import tasks  # noqa: E402

from lavis_mmict.cli import argument_parser, run_main, setup_run  # noqa: E402
from lavis_mmict.models.pool_store import DEFAULT_STORE_DIR, fill_pool_store, icl_datasets_of, run_device  # noqa: E402


def parse_args(argv=None):
    parser = argument_parser("Fill the pool feature store", "model.demo_feature_store_dir=/data/store")
    parser.add_argument("--batch-size", type=int, default=32, help="clips per ViT call")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader processes decoding clips, per rank")
    return parser.parse_args(argv)


def fill(args):
    cfg, _ = setup_run(args)
    task = tasks.setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    device = run_device(cfg.run_cfg)
    model.to(device).eval()
    directory = cfg.model_cfg.get("demo_feature_store_dir", None) or DEFAULT_STORE_DIR
    store = fill_pool_store(model, icl_datasets_of(datasets), directory, device, args.batch_size, args.workers)
    print(f"demo feature store {store.folder}: {len(store)} clips", flush=True)


def main(argv=None):
    args = parse_args(argv)
    run_main("fill_feature_store.py", lambda: fill(args))


if __name__ == "__main__":
    main()
