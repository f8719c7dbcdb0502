"""Miniatures of the official releases docs/data.md starts from: the same folder layout, file
names and json shapes, with a few clips/images (media from _dataset_files: real mp4/avi/jpg).

Each ``make_<dataset>_release(raw)`` writes under ``raw`` (the walkthroughs' ``$RAW``) and returns
{split: number of questions or items} of what the converter should produce.
"""
import os

import cv2
import numpy as np

import _dataset_files as files

ANSWERS = ("dog", "man", "car", "cat")


def write_avi(path, seed, num_frames=6):
    """An MJPG .avi, as MSVD's YouTubeClips are (decord reads it)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 8, (files.SIZE, files.SIZE))
    assert writer.isOpened()
    for frame in range(num_frames):
        writer.write(cv2.cvtColor(np.roll(files.pattern(seed), frame, axis=1), cv2.COLOR_RGB2BGR))
    writer.release()


def _xu_qa(video_ids, first_id, category=False):
    """Records of the Xu et al. (2017) QA release: two questions per clip."""
    records, qid = [], first_id
    for video_id in video_ids:
        for question in ("what is in the clip?", "who is there?"):
            record = {"answer": ANSWERS[(video_id + qid) % len(ANSWERS)], "id": qid, "question": question,
                      "video_id": video_id}
            if category:
                record["category_id"] = video_id % 20
            records.append(record)
            qid += 1
    return records


VIDEO_SPLITS = {"train": [1, 2, 3, 4], "val": [5, 6], "test": [7, 8]}


def make_msvd_release(raw):
    """``YouTubeClips/<name>.avi``, ``MSVD-QA/{split}_qa.json`` and ``youtube_mapping.txt``."""
    mapping = []
    for vid in sum(VIDEO_SPLITS.values(), []):
        name = f"clip{vid:02d}-x_{vid}_{vid + 5}"  # youtube ids contain - and _
        write_avi(os.path.join(raw, "YouTubeClips", f"{name}.avi"), seed=vid)
        mapping.append(f"{name} vid{vid}\n")
    os.makedirs(os.path.join(raw, "MSVD-QA"), exist_ok=True)
    with open(os.path.join(raw, "MSVD-QA", "youtube_mapping.txt"), "w") as f:
        f.writelines(mapping)
    for index, (split, vids) in enumerate(VIDEO_SPLITS.items()):
        files.write_json(os.path.join(raw, "MSVD-QA", f"{split}_qa.json"), _xu_qa(vids, 100 * index))
    return {split: 2 * len(vids) for split, vids in VIDEO_SPLITS.items()}


def make_msrvtt_release(raw):
    """``MSRVTT/videos/all/video<N>.mp4`` and ``MSRVTT-QA/{split}_qa.json`` (with category_id)."""
    for vid in sum(VIDEO_SPLITS.values(), []):
        files.write_video(os.path.join(raw, "MSRVTT", "videos", "all", f"video{vid}.mp4"), seed=vid)
    for index, (split, vids) in enumerate(VIDEO_SPLITS.items()):
        files.write_json(os.path.join(raw, "MSRVTT-QA", f"{split}_qa.json"), _xu_qa(vids, 100 * index, True))
    return {split: 2 * len(vids) for split, vids in VIDEO_SPLITS.items()}


def coco_image(raw, folder, image_id):
    """``coco/<folder>/COCO_<folder>_<id:012d>.jpg``; returns its file name."""
    name = f"COCO_{folder}_{image_id:012d}.jpg"
    files.write_image(os.path.join(raw, "coco", folder, name), seed=image_id)
    return name


KARPATHY = [("train2014", "train"), ("train2014", "train"), ("val2014", "restval"), ("train2014", "train"),
            ("val2014", "val"), ("val2014", "val"), ("val2014", "test"), ("val2014", "test")]


def make_coco_karpathy_release(raw):
    """``coco/{train,val}2014/*.jpg`` and Karpathy's ``dataset_coco.json`` (2 sentences per image)."""
    images, sentid = [], 0
    for imgid, (folder, split) in enumerate(KARPATHY):
        cocoid = 1000 + imgid
        sentences = []
        for text in (f"A photo of thing {imgid}.", f"thing {imgid} on a table"):
            sentences.append({"tokens": text.lower().strip(".").split(), "raw": text, "imgid": imgid,
                              "sentid": sentid})
            sentid += 1
        images.append({"filepath": folder, "sentids": [s["sentid"] for s in sentences],
                       "filename": coco_image(raw, folder, cocoid), "imgid": imgid, "split": split,
                       "sentences": sentences, "cocoid": cocoid})
    files.write_json(os.path.join(raw, "dataset_coco.json"), {"images": images, "dataset": "coco"})
    return {"train": 2 * 4, "val": 2, "test": 2}  # train: one record per caption (train + restval)


VQA_IMAGES = {"train2014": [11, 12, 13, 14], "val2014": [21, 22], "test-dev2015": [31, 32]}


def make_vqav2_release(raw):
    """``coco/{train2014,val2014,test2015}/*.jpg``, ``vqav2/v2_OpenEnded_mscoco_<split>_questions.json``
    and, for train/val, ``vqav2/v2_mscoco_<split>_annotations.json`` (10 answers per question)."""
    counts = {}
    for index, (subtype, image_ids) in enumerate(VQA_IMAGES.items()):
        folder = subtype.replace("test-dev", "test")
        questions, annotations = [], []
        for image_id in image_ids:
            coco_image(raw, folder, image_id)
            for q, question in enumerate(("what color is it?", "is it big?")):
                qid = image_id * 10 + q
                questions.append({"image_id": image_id, "question": question, "question_id": qid})
                answer = ("red", "yes")[q]
                annotations.append({
                    "question_type": ("what color", "is it")[q], "multiple_choice_answer": answer,
                    "answers": [{"answer": answer if a < 7 else "blue", "answer_confidence": "yes", "answer_id": a + 1}
                                for a in range(10)],
                    "image_id": image_id, "answer_type": ("other", "yes/no")[q], "question_id": qid})
        base = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": subtype}
        files.write_json(os.path.join(raw, "vqav2", f"v2_OpenEnded_mscoco_{subtype}_questions.json"),
                         dict(base, questions=questions))
        if not subtype.startswith("test"):
            files.write_json(os.path.join(raw, "vqav2", f"v2_mscoco_{subtype}_annotations.json"),
                             dict(base, annotations=annotations))
        counts[("train", "val", "test")[index]] = len(questions)
    return counts
