"""Convert the VizWiz-VQA annotations to the LAVIS json `vizwiz_icl` reads.

Input (https://vizwiz.org/tasks-and-datasets/vqa/): ``Annotations/{train,val,test}.json``, each a
list of ``{"image": "VizWiz_<split>_<n:08d>.jpg", "question", "answers": [{"answer",
"answer_confidence"} x 10], "answer_type", "answerable"}`` (test: image and question only);
images ``{train,val,test}/VizWiz_<split>_<n:08d>.jpg`` under one folder.

    python run_scripts/data/convert_vizwiz.py --input Annotations --output vizwiz/annotations

Writes ``vizwiz_<split>.json`` for each split file present: ``{"image": "<split>/<file>",
"question", "question_id": file name without extension (one question per image), "image_id",
"answer": [10 answers, "unanswerable" kept], "answer_type", "answerable"}``.
"""
import os

from tqdm import tqdm

from lavis_mmict.datasets.release_formats import read_json, split_files_main, write_split_files

SPLITS = ("train", "val", "test")


def convert_split(path, split):
    records = []
    for index, item in enumerate(tqdm(read_json(path), desc=os.path.basename(path), unit="question")):
        missing = [k for k in ("image", "question") if k not in item]
        if missing:
            raise ValueError(f"{path}: record {index} is missing {missing}")
        stem = os.path.splitext(item["image"])[0]
        record = {"image": f"{split}/{item['image']}", "question": item["question"], "question_id": stem,
                  "image_id": stem}
        if "answers" in item:
            if not item["answers"]:
                raise ValueError(f"{path}: record {index} ({item['image']}) has no answers")
            record["answer"] = [answer["answer"] for answer in item["answers"]]
        for field in ("answer_type", "answerable"):  # icl_vqa reports per answer type and answerability
            if field in item:
                record[field] = item[field]
        records.append(record)
    return records


def convert(input_dir, output_dir):
    found = {split: os.path.join(input_dir, f"{split}.json") for split in SPLITS
             if os.path.isfile(os.path.join(input_dir, f"{split}.json"))}
    if not found:
        raise ValueError(f"{input_dir}: none of {[f'{s}.json' for s in SPLITS]} found (VizWiz's Annotations folder)")
    records = {split: convert_split(path, split) for split, path in found.items()}
    return write_split_files(records, output_dir, "vizwiz_{split}.json")


def main():
    split_files_main(__doc__, convert, "VizWiz's Annotations folder ({train,val,test}.json)",
                     "folder for vizwiz_<split>.json")


if __name__ == "__main__":
    main()
