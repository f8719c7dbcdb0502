"""Generator of the embedded synthetic video-QA data (real mp4 clips + LAVIS json annotations).

Each clip shows one coloured shape (square / circle / triangle; red / green / blue / yellow)
moving over a dark background, and carries a secret code word (one of ``CODE_WORDS``) that is
NOT drawn. Every clip has exactly four QA pairs: its colour, its shape, and the code word asked
two different ways. So a model given same-clip demonstrations can read the code word off a
sibling's answer, while a model without demonstrations can only guess it (1 in 8): the data
rewards using demonstrations.

Layout written under ``root``::

    videos/clip_0000.mp4 ...           # num_frames frames of size x size, mp4v
    annotations/{train,val,test}.json  # [{"video", "question", "answer", "question_id", "question_type"}]
    manifest.json                      # generation parameters + version: same -> no-op

Files are written atomically (lavis_mmict.atomic), so a concurrent reader never sees half a file;
the manifest is written last.
"""
import json
import os
from typing import Dict, Optional

import cv2
import numpy as np

from lavis_mmict.atomic import atomic_output, write_json_atomic
from lavis_mmict.errors import ConfigError

GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test")
DEFAULT_NUM_CLIPS = {"train": 160, "val": 40, "test": 40}

# Colour name -> RGB; kept far apart so they survive mp4 compression at 32 px.
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 235),
    "yellow": (235, 215, 40),
}
SHAPES = ("square", "circle", "triangle")
CODE_WORDS = ("apple", "river", "tiger", "cloud", "stone", "piano", "lemon", "rocket")
# (question, question_type, which clip attribute answers it)
QUESTIONS = (
    ("what color is the shape?", "color", "color"),
    ("what shape is shown?", "shape", "shape"),
    ("what is the code word?", "code", "code_word"),
    ("which word is secret?", "code", "code_word"),
)


def _vocabulary():
    words = set(COLORS) | set(SHAPES) | set(CODE_WORDS)
    for question, _, _ in QUESTIONS:
        words.update(question.rstrip("?").split())
    return tuple(sorted(words))


# Every lowercase word a question or answer can contain (questions end with "?").
SYNTHETIC_VOCABULARY = _vocabulary()


def generate_synthetic_videoqa(
    root: str,
    seed: int = 0,
    num_clips: Optional[Dict[str, int]] = None,
    num_frames: int = 8,
    size: int = 32,
    fps: int = 8,
) -> dict:
    """Write the synthetic data set under ``root`` unless the same parameters are already there.

    Args:
        root: output folder (created if missing).
        seed: generation seed; the content is a deterministic function of all parameters.
        num_clips: clips per split, default {"train": 160, "val": 40, "test": 40}; each clip
            gives 4 records, so question ids (unique across splits) run to 4 * total clips.
        num_frames: frames per clip; size: frame height = width in pixels; fps: clip frame rate.

    Returns the manifest dict (parameters, version and the split annotation file names).
    """
    num_clips = dict(DEFAULT_NUM_CLIPS if num_clips is None else num_clips)
    unknown_splits = sorted(set(num_clips) - set(SPLITS))
    if unknown_splits:
        raise ConfigError(f"Unknown split(s) {unknown_splits} in num_clips; valid: {list(SPLITS)}")
    parameters = {
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "num_clips": {split: int(num_clips[split]) for split in SPLITS if split in num_clips},
        "num_frames": int(num_frames),
        "size": int(size),
        "fps": int(fps),
    }
    manifest_path = os.path.join(root, "manifest.json")
    if _is_generated(root, manifest_path, parameters):
        return _read_json(manifest_path)

    video_dir = os.path.join(root, "videos")
    annotation_dir = os.path.join(root, "annotations")
    os.makedirs(video_dir, exist_ok=True)
    os.makedirs(annotation_dir, exist_ok=True)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)  # parameters changed: invalid until regeneration completes

    clip_index, question_id = 0, 0
    written_videos = set()
    for split, split_clips in parameters["num_clips"].items():
        records = []
        for _ in range(split_clips):
            clip = _random_clip(np.random.default_rng([parameters["seed"], clip_index]))
            video_name = f"clip_{clip_index:04d}.mp4"
            frames = render_clip_frames(clip, num_frames, size)
            _write_video_atomic(os.path.join(video_dir, video_name), frames, fps)
            written_videos.add(video_name)
            for question, question_type, attribute in QUESTIONS:
                records.append({
                    "video": video_name,
                    "question": question,
                    "answer": clip[attribute],
                    "question_id": question_id,
                    "question_type": question_type,
                })
                question_id += 1
            clip_index += 1
        write_json_atomic(os.path.join(annotation_dir, f"{split}.json"), records, indent=1)
    _remove_stale_files(video_dir, annotation_dir, written_videos, parameters["num_clips"])

    manifest = dict(parameters, annotations={s: f"annotations/{s}.json" for s in parameters["num_clips"]})
    write_json_atomic(manifest_path, manifest, indent=1)
    return manifest


def _random_clip(rng: np.random.Generator) -> dict:
    """Colour, shape and code word (independent, uniform) plus the motion of one clip."""
    return {
        "color": str(rng.choice(list(COLORS))),
        "shape": str(rng.choice(SHAPES)),
        "code_word": str(rng.choice(CODE_WORDS)),
        "start": rng.uniform(0.0, 1.0, size=2),  # relative start position in the free area
        "velocity": rng.choice([-2, -1, 1, 2], size=2),  # pixels per frame (x, y)
        "background": int(rng.integers(10, 40)),
    }


def render_clip_frames(clip: dict, num_frames: int, size: int) -> np.ndarray:
    """Frames of one clip as (num_frames, size, size, 3) uint8 BGR (OpenCV order).

    The shape spans about a third of the frame and bounces off the borders.
    """
    half = max(2, round(size / 6))  # half extent: the shape is ~size/3 wide
    low, high = half + 1, size - half - 2  # keeps the whole shape inside the frame
    span = high - low
    start = low + clip["start"] * span
    steps = np.arange(num_frames)[:, None] * clip["velocity"][None, :]  # (F, 2)
    # Reflect the unbounded path into [low, high] (a triangle wave): bouncing motion.
    offset = np.mod(start - low + steps, 2 * span)
    centres = np.rint(low + np.where(offset > span, 2 * span - offset, offset)).astype(int)

    red, green, blue = COLORS[clip["color"]]
    colour_bgr = (blue, green, red)
    frames = np.full((num_frames, size, size, 3), clip["background"], dtype=np.uint8)
    for frame, (x, y) in zip(frames, centres):  # OpenCV draws one image at a time
        if clip["shape"] == "square":
            cv2.rectangle(frame, (x - half, y - half), (x + half, y + half), colour_bgr, -1)
        elif clip["shape"] == "circle":
            cv2.circle(frame, (x, y), half + 1, colour_bgr, -1)
        else:
            corners = np.array([[x, y - half - 1], [x - half - 1, y + half], [x + half + 1, y + half]])
            cv2.fillPoly(frame, [corners.astype(np.int32)], colour_bgr)
    return frames


def _is_generated(root: str, manifest_path: str, parameters: dict) -> bool:
    if not os.path.isfile(manifest_path):
        return False
    try:
        manifest = _read_json(manifest_path)
    except (OSError, ValueError):
        return False
    same = all(manifest.get(key) == value for key, value in parameters.items())
    files_present = all(
        os.path.isfile(os.path.join(root, "annotations", f"{split}.json"))
        for split in parameters["num_clips"]
    )
    return same and files_present


def _write_video_atomic(path: str, frames: np.ndarray, fps: int):
    height, width = frames.shape[1:3]
    # The temporary name keeps the .mp4 suffix: OpenCV picks the container from it.
    with atomic_output(path, keep_extension=True) as temporary:
        writer = cv2.VideoWriter(temporary, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot open a mp4v writer for {temporary}")
        for frame in frames:
            writer.write(frame)
        writer.release()


def _read_json(path: str):
    with open(path, "r") as file:
        return json.load(file)


def _remove_stale_files(video_dir: str, annotation_dir: str, videos: set, splits: dict):
    """Drop clips and split files left over from a generation with other parameters."""
    for name in os.listdir(video_dir):
        if name.startswith("clip_") and name.endswith(".mp4") and name not in videos:
            os.remove(os.path.join(video_dir, name))
    for split in SPLITS:
        path = os.path.join(annotation_dir, f"{split}.json")
        if split not in splits and os.path.exists(path):
            os.remove(path)
