"""Miniatures of the releases of AIM's evaluation sets (docs/data.md): the same folder layout, file
names and json shapes, with a few real JPEG/PNG images. Each ``make_<set>_release(raw)`` writes under
``raw`` (the walkthroughs' ``$RAW``) and returns what the converter should produce."""
import json
import os

import cv2

import _dataset_files as files
from _release_files import coco_image

# OK-VQA: 10 answers per question, as (answer, count) groups; the VQA score of a prediction
# matching m of the 10 answers is min(1, m/3) averaged over the 10 leave-one-out subsets.
OKVQA_ANSWERS = [[("red", 7), ("blue", 3)], [("dog", 4), ("cat", 2), ("horse", 1), ("bird", 3)]]
OKVQA_IMAGES = {"train2014": [41, 42, 43, 44], "val2014": [51, 52]}


def make_okvqa_release(raw):
    """``coco/{train,val}2014/*.jpg``, ``okvqa/OpenEnded_mscoco_<split>2014_questions.json`` and
    ``okvqa/mscoco_<split>2014_annotations.json`` (OK-VQA v1.1: answers with raw_answer)."""
    counts = {}
    for subtype, image_ids in OKVQA_IMAGES.items():
        questions, annotations = [], []
        for image_id in image_ids:
            coco_image(raw, subtype, image_id)
            for q, groups in enumerate(OKVQA_ANSWERS):
                qid = image_id * 10 + q
                questions.append({"image_id": image_id, "question": f"what is thing {q}?", "question_id": qid})
                answers = [answer for answer, count in groups for _ in range(count)]
                annotations.append({
                    "image_id": image_id, "answer_type": "other", "question_type": "one", "question_id": qid,
                    "confidence": 3,
                    "answers": [{"answer_id": a + 1, "raw_answer": answer + "s", "answer_confidence": "yes",
                                 "answer": answer} for a, answer in enumerate(answers)]})
        base = {"info": {}, "license": {}, "data_subtype": subtype}
        files.write_json(os.path.join(raw, "okvqa", f"OpenEnded_mscoco_{subtype}_questions.json"),
                         dict(base, task_type="Open-Ended", data_type="mscoco", questions=questions))
        files.write_json(os.path.join(raw, "okvqa", f"mscoco_{subtype}_annotations.json"),
                         dict(base, data_type="mscoco", annotations=annotations))
        counts[subtype] = len(questions)
    return counts


# VizWiz: (answers, answer_type, answerable) per image of each split; test has no answers.
VIZWIZ_QUESTIONS = [
    (["yes"] * 8 + ["no"] * 2, "yes/no", 1),
    (["unanswerable"] * 6 + ["coffee"] * 4, "unanswerable", 0),
    (["2"] * 3 + ["two"] * 2 + ["3"] * 5, "number", 1),
]
VIZWIZ_SPLITS = {"train": 4, "val": 3, "test": 2}


def make_vizwiz_release(raw):
    """``vizwiz/Annotations/{train,val,test}.json`` and ``vizwiz/{train,val,test}/VizWiz_<split>_<n:08d>.jpg``."""
    for split, count in VIZWIZ_SPLITS.items():
        records = []
        for n in range(count):
            name = f"VizWiz_{split}_{n:08d}.jpg"
            files.write_image(os.path.join(raw, "vizwiz", split, name), seed=100 + 10 * len(split) + n)
            record = {"image": name, "question": f"What is in picture {n}?"}
            if split != "test":
                answers, answer_type, answerable = VIZWIZ_QUESTIONS[n % len(VIZWIZ_QUESTIONS)]
                record.update(answers=[{"answer": a, "answer_confidence": "yes"} for a in answers],
                              answer_type=answer_type, answerable=answerable)
            records.append(record)
        files.write_json(os.path.join(raw, "vizwiz", "Annotations", f"{split}.json"), records)
    return dict(VIZWIZ_SPLITS)


HATEFUL_MEMES = {"train": [(101, 1), (102, 0), (103, 0), (104, 1)], "dev": [(201, 1), (202, 0), (203, 0), (204, 1)]}


def make_hateful_memes_release(raw):
    """``hateful_memes/data/{train,dev}.jsonl`` (``{"id", "img", "label", "text"}`` per line) and
    ``hateful_memes/data/img/<id>.png``."""
    data = os.path.join(raw, "hateful_memes", "data")
    for split, memes in HATEFUL_MEMES.items():
        lines = []
        for meme_id, label in memes:
            os.makedirs(os.path.join(data, "img"), exist_ok=True)
            cv2.imwrite(os.path.join(data, "img", f"{meme_id:05d}.png"), files.pattern(meme_id))
            lines.append(json.dumps({"id": meme_id, "img": f"img/{meme_id:05d}.png", "label": label,
                                     "text": f"meme number {meme_id} says {{hello}}"}))
        with open(os.path.join(data, f"{split}.jsonl"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return {split: len(memes) for split, memes in HATEFUL_MEMES.items()}


FLICKR_SPLITS = ["train", "train", "train", "train", "val", "test", "test"]


def make_flickr30k_release(raw):
    """``flickr30k-images/<id>.jpg`` and Karpathy's ``dataset_flickr30k.json`` (2 sentences per image)."""
    images, sentid = [], 0
    for imgid, split in enumerate(FLICKR_SPLITS):
        filename = f"{1000092795 + imgid}.jpg"
        files.write_image(os.path.join(raw, "flickr30k-images", filename), seed=300 + imgid)
        sentences = []
        for text in (f"A dog runs in field {imgid}.", f"a dog in field {imgid}"):
            sentences.append({"tokens": text.lower().strip(".").split(), "raw": text, "imgid": imgid, "sentid": sentid})
            sentid += 1
        images.append({"sentids": [s["sentid"] for s in sentences], "imgid": imgid, "sentences": sentences,
                       "split": split, "filename": filename})
    files.write_json(os.path.join(raw, "dataset_flickr30k.json"), {"images": images, "dataset": "flickr30k"})
    return {"train": 2 * 4, "val": 1, "test": 2}
