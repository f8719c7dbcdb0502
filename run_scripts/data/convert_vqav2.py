"""Convert the official VQAv2 files (or OK-VQA's, in the same format) to the LAVIS json `vqav2_icl`
(`okvqa_icl`) reads.

OK-VQA (https://okvqa.allenai.org/download.html): ``OpenEnded_mscoco_<split>2014_questions.json`` and
``mscoco_<split>2014_annotations.json``; each answer's ``answer`` field is used (as in LAVIS's
okvqa files), not ``raw_answer``.

Input (https://visualqa.org/download.html): ``v2_OpenEnded_mscoco_<split>2014_questions.json``
and, for train/val, ``v2_mscoco_<split>2014_annotations.json``; test-dev/test questions
(``v2_OpenEnded_mscoco_test-dev2015_questions.json``) have no annotations. Images: COCO
train2014 / val2014 / test2015 under one folder.

    python run_scripts/data/convert_vqav2.py --questions v2_OpenEnded_mscoco_train2014_questions.json \
        --annotations v2_mscoco_train2014_annotations.json --output coco/annotations/vqa_train.json
    python run_scripts/data/convert_vqav2.py --questions v2_OpenEnded_mscoco_test-dev2015_questions.json \
        --output coco/annotations/vqa_test.json

Each record: ``{"question_id", "question", "answer": [10 annotator answers] (absent without
annotations), "image": "<split>/COCO_<split>_<image_id:012d>.jpg", "image_id", "question_type":
answer type (yes/no, number, other)}``.
"""
import argparse

from tqdm import tqdm

from lavis_mmict.atomic import write_json_atomic
from lavis_mmict.datasets.release_formats import read_json


def convert(questions_path, annotations_path, output_path):
    questions = read_json(questions_path)
    image_folder = questions.get("data_subtype")  # e.g. train2014, val2014, test2015
    if not image_folder:
        raise ValueError(f"{questions_path}: no 'data_subtype' (the COCO image folder, e.g. val2014)")
    if image_folder.startswith("test-dev"):
        image_folder = image_folder.replace("test-dev", "test")  # test-dev images live in test2015
    annotations = {}
    if annotations_path:
        for annotation in read_json(annotations_path)["annotations"]:
            annotations[annotation["question_id"]] = annotation
    records = []
    for index, question in enumerate(tqdm(questions["questions"], desc=image_folder, unit="question")):
        record = {
            "question_id": question["question_id"],
            "question": question["question"],
            "image": f"{image_folder}/COCO_{image_folder}_{question['image_id']:012d}.jpg",
            "image_id": question["image_id"],
        }
        if annotations_path:
            annotation = annotations.get(question["question_id"])
            if annotation is None:
                raise ValueError(f"{annotations_path}: no annotation for question_id {question['question_id']} "
                                 f"(question {index} of {questions_path})")
            record["answer"] = [answer["answer"] for answer in annotation["answers"]]
            # VQAv2's breakdowns: question_type ("what color", ...) and answer_type (yes/no, number, other)
            for field in ("question_type", "answer_type"):
                if field in annotation:
                    record[field] = annotation[field]
        records.append(record)
    write_json_atomic(output_path, records)
    return output_path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", required=True)
    parser.add_argument("--annotations", default=None, help="omit for test / test-dev questions")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    print(convert(args.questions, args.annotations, args.output))


if __name__ == "__main__":
    main()
