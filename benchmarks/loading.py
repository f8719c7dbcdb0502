"""Table 6: data loading with demonstrations, and the training step that includes it.

Real mp4 clips (the synthetic video-QA generator, 224 px) are read with decord by ``ICLDataset``
through a DataLoader with one worker process, as a training split is: queries with the train
processor, demonstrations with the eval one. Variants: K=0, K=4 decoding every demo, and K=4
with the pool feature store (models/pool_store.py: stored demos are not decoded, the model reads
their ViT output). Each round makes a fresh DataLoader per variant (order alternating per round),
takes one untimed batch (worker start-up), then times ``batches`` batches; with one worker the
time per batch is the worker's time to produce it.
"""
import os
import time
from typing import Dict, List

import torch
from torch.utils.data import DataLoader

from benchmarks.sizes import SIZES, build_model, image_size
from benchmarks.timing import median, median_ratio

CLIP_SIZE = 224  # frame size of the generated mp4 clips
CLIP_FRAMES = 16  # frames per mp4 clip (the dataset samples SIZES[size].frames of them)


def icl_split(root, num_frames, pixels, shots, store=None):
    """The generated train split as a training ICLDataset with ``shots`` random demos per query."""
    from lavis.processors.blip_processors import Blip2ImageTrainProcessor, BlipImageEvalProcessor, BlipQuestionProcessor

    from lavis_mmict.datasets.icl_dataset import ICLDataset, MediaRecordDataset

    records = MediaRecordDataset(Blip2ImageTrainProcessor(image_size=pixels), BlipQuestionProcessor(),
                                 os.path.join(root, "videos"), [os.path.join(root, "annotations", "train.json")],
                                 num_frames=num_frames, is_train=True, name="bench/train")
    dataset = ICLDataset(records, {"num": shots, "strategy": "random", "seed": 0},
                         demo_vis_processor=BlipImageEvalProcessor(image_size=pixels), is_train=True,
                         name="bench/train")
    if store is not None:
        dataset.stored_demo_keys = store.keys()
    return dataset


def _batches(dataset, batch, workers=1):
    endless = [index % len(dataset) for index in range(batch * 1000)]
    return iter(DataLoader(dataset, batch_size=batch, sampler=endless, num_workers=workers,
                           collate_fn=dataset.collater))


def _timed_rounds(variants: Dict[str, callable], rounds: int) -> Dict[str, List[float]]:
    """Each variant is a factory: () -> a timed callable (made after its untimed warm-up)."""
    seconds = {name: [] for name in variants}
    names = list(variants)
    for index in range(rounds):
        for name in (names if index % 2 == 0 else reversed(names)):
            run = variants[name]()
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def loader_speed(size, device, rounds, root, shots=4, batch=8, batches=3, step_batch=4, steps=2,
                 target=1.5):
    """Loader s/sample at K=shots vs K=0 (target: with the store <= ``target`` x), then the
    training step including loading at K=shots with vs without the store."""
    from benchmarks.tables import Table, _batched_loss, _trainable, _training_step, _verdict
    from lavis_mmict.datasets.synthetic import generate_synthetic_videoqa
    from lavis_mmict.models.feature_cache import DemoFeatureCache
    from lavis_mmict.models.pool_store import fill_pool_store

    num_frames = SIZES[size].frames
    generate_synthetic_videoqa(root, num_clips={"train": 32}, num_frames=CLIP_FRAMES, size=CLIP_SIZE)
    model = build_model(size, device)
    pixels = image_size(model)
    plain = icl_split(root, num_frames, pixels, shots)
    store = fill_pool_store(model, [plain], os.path.join(root, "store"), device, batch_size=8, num_workers=1)
    with_store = icl_split(root, num_frames, pixels, shots, store)
    no_demos = icl_split(root, num_frames, pixels, 0)

    def loading(dataset):
        def warmed_up():
            iterator = _batches(dataset, batch)
            next(iterator)
            return lambda: [next(iterator) for _ in range(batches)]
        return warmed_up

    seconds = _timed_rounds({"K=0": loading(no_demos), f"K={shots}": loading(plain),
                             f"K={shots}, store": loading(with_store)}, rounds)
    table = Table(f"6. Data loading with demonstrations: mp4 clips (decord), 1 worker ({size}, B={batch})",
                  ["variant", "ms/sample (loader)", "x K=0", "ms/step incl. loading", "x no store"])
    per_sample = {name: [s / (batch * batches) for s in values] for name, values in seconds.items()}

    # the training step including loading (the worker prepares the next batch during the step)
    optimizer = torch.optim.AdamW(_trainable(model), lr=1e-5)
    no_cache, store_cache = DemoFeatureCache("none"), DemoFeatureCache("none")
    store_cache.pool_store = store

    def training(dataset, cache):
        def warmed_up():
            iterator = _batches(dataset, step_batch)

            def step():
                model.demo_feature_cache = cache
                samples = next(iterator)
                samples = {k: v.to(device) if torch.is_tensor(v) else v for k, v in samples.items()}
                _training_step(model, optimizer, samples, _batched_loss)()
            step()
            return lambda: [step() for _ in range(steps)]
        return warmed_up

    step_seconds = _timed_rounds({f"K={shots}": training(plain, no_cache),
                                  f"K={shots}, store": training(with_store, store_cache)}, rounds)
    model.demo_feature_cache = no_cache
    for name, values in per_sample.items():
        step = step_seconds.get(name)
        table.rows.append([name, 1000 * median(values), median_ratio(values, per_sample["K=0"]),
                           1000 * median(step) / steps if step else "-",
                           median_ratio(step, step_seconds[f"K={shots}"]) if step else "-"])
    table.targets.append(_verdict(f"loader K={shots} with store / K=0",
                                  median_ratio(per_sample[f"K={shots}, store"], per_sample["K=0"]),
                                  target, at_least=False))
    table.notes.append(f"loader without the store: {median_ratio(per_sample[f'K={shots}'], per_sample['K=0']):.2f}x "
                       f"K=0 (each query decodes {shots + 1} clips); store of {len(store)} clips filled in "
                       f"this run; training step B={step_batch}, {steps} steps per round")
    return table
