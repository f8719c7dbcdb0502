"""Batching ICLDataset items: demonstrations padded to the batch's largest K.

A stored demonstration (pool feature store, models/pool_store.py) is not decoded: its slot holds
zeros, and when no item of a batch holds a decoded clip the demo frames are (B, K, F, 3, 0, 0), so
no frames are made, pinned or copied to the GPU.
"""
from typing import List, Optional

import torch
from torch.nn.utils.rnn import pad_sequence


def stack_demo_frames(frames: List[Optional[torch.Tensor]], query: torch.Tensor) -> torch.Tensor:
    """k demo clips (None = stored, not decoded) -> (k, F, 3, H, W) shaped like ``query`` (F, 3, H, W),
    zeros for stored ones; (k, F, 3, 0, 0), no memory, when all k are stored."""
    if frames and all(clip is None for clip in frames):
        return query.new_zeros((len(frames),) + query.shape[:-2] + (0, 0))
    zeros = query.new_zeros(query.shape)
    return torch.stack([zeros if clip is None else clip for clip in frames]) if frames else query.new_zeros(
        (0,) + query.shape)


def pad_demo_images(images: List[torch.Tensor]) -> torch.Tensor:
    """Items' (k_i, F, 3, H, W) demo clips -> (B, K, F, 3, H, W), zero-padded. When no item holds a
    decoded clip but some hold stored ones (pool feature store), (B, K, F, 3, 0, 0): no frames travel."""
    stored = [image for image in images if len(image) and not image.numel()]
    if not stored:
        return pad_sequence(images, batch_first=True)
    decoded = [image for image in images if image.numel()]
    if not decoded:
        return stored[0].new_zeros((len(images), max(len(image) for image in images)) + stored[0].shape[1:])
    shape = decoded[0].shape[1:]
    return pad_sequence([image.new_zeros((len(image),) + shape) if not image.numel() else image
                         for image in images], batch_first=True)


# Per-sample values passed through as lists, when the samples carry them.
PASS_THROUGH_KEYS = ("question_id", "question_type", "answer_type", "answerable", "video", "image_id")


def collate_icl_samples(samples: List[dict]) -> dict:
    """Batch ICLDataset items; demos padded to the batch's largest demo count K.

    Returns::

        {"image": (B,F,3,H,W), "text_input": [B] str, "text_output": [B] str,
         "demo_image": (B,K,F,3,H,W), zeros where no demo,
         "demo_text": [B][K] str, "" where no demo,
         "demo_mask": (B,K) bool, True = real demo,
         "demo_media_key": [B][K] str, "" where no demo (when every item has keys),
         "question_id": [B], "video": [B] and/or "image_id": [B]}

    K = 0 for the whole batch gives demo_image (B,0,F,3,H,W) and demo_mask (B,0).
    """
    demo_counts = torch.tensor([len(sample["demo_text"]) for sample in samples], dtype=torch.long)
    demo_image = pad_demo_images([sample["demo_image"] for sample in samples])
    max_demos = demo_image.shape[1]
    batch = {
        "image": torch.stack([sample["image"] for sample in samples]),
        "text_input": [sample["text_input"] for sample in samples],
        "text_output": [sample["text_output"] for sample in samples],
        "demo_image": demo_image,
        "demo_text": [
            list(sample["demo_text"]) + [""] * (max_demos - len(sample["demo_text"]))
            for sample in samples
        ],
        "demo_mask": torch.arange(max_demos)[None, :] < demo_counts[:, None],
    }
    if all("demo_media_key" in sample for sample in samples):
        batch["demo_media_key"] = [
            list(sample["demo_media_key"]) + [""] * (max_demos - len(sample["demo_media_key"]))
            for sample in samples
        ]
    for key in PASS_THROUGH_KEYS:
        if all(key in sample for sample in samples):
            batch[key] = [sample[key] for sample in samples]
    return batch
