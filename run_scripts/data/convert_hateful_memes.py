"""Convert the Hateful Memes release to the LAVIS json `hateful_memes_icl` reads.

Input (https://hatefulmemeschallenge.com, Facebook AI): the release folder ``data/`` holding
``train.jsonl``, ``dev.jsonl`` (and ``test.jsonl``, ``dev_seen.jsonl``, ... in later releases),
one json per line ``{"id", "img": "img/<id>.png", "label": 0 | 1, "text"}`` (no ``label`` in an
unlabelled test file), and ``img/<id>.png``.

    python run_scripts/data/convert_hateful_memes.py --input data --output hateful_memes/annotations

Writes ``<name>.json`` per input file (``--splits``, default ``train dev``): ``{"image":
"img/<id>.png", "question": the meme text, "question_id": id, "answer": "yes" (label 1, hateful)
| "no" (label 0), "label"}``. `icl_classification` scores the answers (docs/evaluation.md).
"""
import argparse
import json
import os

from tqdm import tqdm

from lavis_mmict.datasets.release_formats import write_split_files

ANSWER_OF_LABEL = {1: "yes", 0: "no"}


def read_jsonl(path):
    with open(path, "r") as file:
        lines = [line for line in file if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except ValueError as error:
            raise ValueError(f"{path}: line {number} is not valid json: {error}") from None
    return records


def convert_file(path):
    records = []
    for index, item in enumerate(tqdm(read_jsonl(path), desc=os.path.basename(path), unit="meme")):
        missing = [k for k in ("id", "img", "text") if k not in item]
        if missing:
            raise ValueError(f"{path}: line {index + 1} is missing {missing}")
        record = {"image": item["img"], "question": item["text"], "question_id": item["id"], "image_id": item["id"]}
        if "label" in item:
            if item["label"] not in ANSWER_OF_LABEL:
                raise ValueError(f"{path}: line {index + 1} (id {item['id']}) has label {item['label']!r}, not 0 or 1")
            record["answer"], record["label"] = ANSWER_OF_LABEL[item["label"]], item["label"]
        records.append(record)
    return records


def convert(input_dir, output_dir, splits=("train", "dev")):
    paths = {name: os.path.join(input_dir, f"{name}.jsonl") for name in splits}
    missing = [path for path in paths.values() if not os.path.isfile(path)]
    if missing:
        raise ValueError(f"Hateful Memes file(s) not found: {missing}")
    return write_split_files({name: convert_file(path) for name, path in paths.items()}, output_dir, "{split}.json")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="the release's data/ folder (train.jsonl, dev.jsonl, img/)")
    parser.add_argument("--output", required=True, help="folder for <name>.json")
    parser.add_argument("--splits", nargs="+", default=["train", "dev"], help="jsonl files to convert (names without .jsonl)")
    args = parser.parse_args()
    for split, path in convert(args.input, args.output, args.splits).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
