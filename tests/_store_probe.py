"""Run by torchrun (or plainly) in the sharded-extraction tests: fill a pool feature store and
compute ``similar`` features of a generated video-QA set, sharded across the ranks.

    python tests/_store_probe.py <annotations json> <media dir> <store dir> <similar cache dir>
"""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_dataset(annotations, media, similar_cache=None):
    from lavis.processors.blip_processors import BlipImageEvalProcessor, BlipQuestionProcessor

    from lavis_mmict.datasets.icl_dataset import ICLDataset

    demonstrations = {"num": 2, "seed": 0}
    if similar_cache:
        demonstrations.update(strategy="similar", feature_cache=similar_cache,
                              encoder={"vit_model": "tiny", "image_size": 32, "batch_size": 3, "num_workers": 1})
    return ICLDataset.from_annotations(BlipImageEvalProcessor(32), BlipQuestionProcessor(), media, [annotations],
                                      demo_config=demonstrations, num_frames=2, name="probe/train")


def build_model(seed=0):
    from omegaconf import OmegaConf

    from lavis_mmict.models.mmict_blip2 import MMICTBlip2

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = OmegaConf.load(os.path.join(root, "lavis_mmict", "configs", "models", "mmict_blip2_tiny.yaml")).model
    torch.manual_seed(seed)
    return MMICTBlip2.from_config(cfg).eval()


def main(annotations, media, store_dir, similar_cache):
    from lavis_mmict.models.pool_store import fill_pool_store

    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    torch.set_num_threads(1)
    from lavis_mmict.datasets.icl_dataset import ICLDataset

    # every clip read for the similar features is noted in this rank's file (also from DataLoader
    # workers): each rank must read only its share
    rank = dist.get_rank() if dist.is_initialized() else 0
    original = ICLDataset._demo_frames

    def noted(self, dataset, index):
        with open(f"{similar_cache}.loads-rank{rank}", "a") as file:
            file.write(f"{index}\n")
        return original(self, dataset, index)

    ICLDataset._demo_frames = noted
    build_dataset(annotations, media, similar_cache)  # computes the similar features (sharded)
    ICLDataset._demo_frames = original
    fill_pool_store(build_model(), [build_dataset(annotations, media)], store_dir, "cpu", batch_size=3,
                    num_workers=1)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5])
