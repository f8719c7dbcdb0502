"""Small data sets in each annotation format the *_icl builders read, written by the tests.

Media are real files: mp4 (cv2, read back by decord), folders of jpg frames, jpg images. Every
clip/image has a known, distinct content (a random pattern from its seed) so similarity tests
know the answer.
"""
import json
import os

import cv2
import numpy as np

SIZE = 32
SPLITS = ("train", "val", "test")


def pattern(seed, size=SIZE, noise=0):
    """A (size, size, 3) uint8 RGB pattern determined by ``seed``; ``noise`` adds a small jitter."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_NEAREST).astype(np.int16)
    if noise:
        image += np.random.default_rng(seed + 10_000).integers(-noise, noise + 1, size=image.shape).astype(np.int16)
    return image.clip(0, 255).astype(np.uint8)


def write_image(path, seed, noise=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, cv2.cvtColor(pattern(seed, noise=noise), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])


def write_video(path, seed, num_frames=6):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 8, (SIZE, SIZE))
    assert writer.isOpened()
    for frame in range(num_frames):
        writer.write(cv2.cvtColor(np.roll(pattern(seed), frame, axis=1), cv2.COLOR_RGB2BGR))
    writer.release()


def write_frame_folder(folder, seed, num_frames=6):
    for frame in range(num_frames):
        path = os.path.join(folder, f"frame_{frame:04d}.jpg")
        os.makedirs(folder, exist_ok=True)
        cv2.imwrite(path, cv2.cvtColor(np.roll(pattern(seed), frame, axis=1), cv2.COLOR_RGB2BGR))


def write_json(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as file:
        json.dump(records, file)
    return path


def make_videoqa(root, clips=None, questions_per_clip=2, frame_folders=False):
    """LAVIS video-QA json (MSVD-QA / MSRVTT-QA format) + mp4 clips (or frame folders).

    Clip ``c`` of split ``s`` is ``video{n}.mp4``; its questions ask "what is in clip n?" (answer
    ``thing{n}``) and more. With ``frame_folders`` every odd clip is a folder ``video{n}/``.
    Returns {"annotations": {split: path}, "media": folder}.
    """
    clips = clips or {"train": 4, "val": 2, "test": 2}
    media = os.path.join(root, "videos")
    annotations, number, question_id = {}, 0, 0
    for split in SPLITS:
        records = []
        for _ in range(clips[split]):
            name = f"video{number}.mp4"
            if frame_folders and number % 2:
                write_frame_folder(os.path.join(media, f"video{number}"), seed=number)
            else:
                write_video(os.path.join(media, name), seed=number)
            for q in range(questions_per_clip):
                records.append({"video": name, "question": f"what is item {q} of the clip?",
                                "answer": f"thing{number}x{q}", "question_id": question_id,
                                "question_type": "what"})
                question_id += 1
            number += 1
        annotations[split] = write_json(os.path.join(root, "annotations", f"qa_{split}.json"), records)
    return {"annotations": annotations, "media": media}


def make_vqav2(root, images=None, questions_per_image=2, unlabelled_test=True):
    """LAVIS VQAv2 json: answers are lists of 10 annotator answers; test has none (test-dev)."""
    images = images or {"train": 4, "val": 2, "test": 2}
    media = os.path.join(root, "images")
    annotations, number, question_id = {}, 0, 0
    for split in SPLITS:
        records = []
        for _ in range(images[split]):
            name = f"{split}2014/COCO_{split}2014_{number:012d}.jpg"
            write_image(os.path.join(media, name), seed=100 + number)
            for q in range(questions_per_image):
                record = {"image": name, "question": f"what colour is part {q}?", "question_id": question_id,
                          "dataset": "vqa"}
                if not (unlabelled_test and split == "test"):
                    record["answer"] = [f"red{number}"] * 6 + [f"blue{number}"] * 4
                    record["answer_type"] = "other"
                records.append(record)
                question_id += 1
            number += 1
        annotations[split] = write_json(os.path.join(root, "annotations", f"vqa_{split}.json"), records)
    return {"annotations": annotations, "media": media}


def make_imageqa(root, images=None):
    """Plain image-QA json with one string answer per question."""
    images = images or {"train": 4, "val": 2, "test": 2}
    media = os.path.join(root, "images")
    annotations, number = {}, 0
    for split in SPLITS:
        records = []
        for _ in range(images[split]):
            name = f"img{number}.jpg"
            write_image(os.path.join(media, name), seed=200 + number)
            records.append({"image": name, "question": "what is it?", "answer": f"thing{number}",
                            "question_id": f"q{number}"})
            number += 1
        annotations[split] = write_json(os.path.join(root, "annotations", f"{split}.json"), records)
    return {"annotations": annotations, "media": media}


def make_captions(root, data_type="videos", items=None, captions_per_item=3, with_image_id=True):
    """LAVIS caption json: train one record per caption; val/test one record per item with a
    caption list (COCO Karpathy val/test have no image_id: ``with_image_id=False``)."""
    items = items or {"train": 4, "val": 2, "test": 2}
    media = os.path.join(root, data_type)
    field = "video" if data_type == "videos" else "image"
    annotations, number = {}, 0
    for split in SPLITS:
        records = []
        for _ in range(items[split]):
            if data_type == "videos":
                name = f"video{number}.mp4"
                write_video(os.path.join(media, name), seed=300 + number)
            else:
                name = f"val2014/COCO_val2014_{number:012d}.jpg"
                write_image(os.path.join(media, name), seed=300 + number)
            captions = [f"a picture of thing {number} seen {c} times" for c in range(captions_per_item)]
            ids = {"image_id": f"id{number}"} if (with_image_id or split == "train") else {}
            if split == "train":
                records += [{field: name, "caption": caption, **ids} for caption in captions]
            else:
                records.append({field: name, "caption": captions, **ids})
            number += 1
        annotations[split] = write_json(os.path.join(root, "annotations", f"cap_{split}.json"), records)
    return {"annotations": annotations, "media": media}
