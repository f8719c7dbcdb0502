"""Convert Karpathy's ``dataset_coco.json`` to the LAVIS caption json `coco_caption_icl` reads.

Input: ``dataset_coco.json`` from Karpathy's split (https://cs.stanford.edu/people/karpathy/deepimagesent/,
``caption_datasets.zip``); images: COCO train2014 + val2014 under one folder.

    python run_scripts/data/convert_coco_karpathy.py --input dataset_coco.json --output coco/annotations

Writes ``coco_karpathy_{train,val,test}.json``: train (Karpathy ``train`` + ``restval``) one
record per caption ``{"image": "val2014/COCO_val2014_....jpg", "caption", "image_id"}``; val and
test one record per image with all its captions (``"caption": [...]``), as LAVIS's files.
"""
import argparse
import os

from tqdm import tqdm

from lavis_mmict.atomic import write_json_atomic
from lavis_mmict.datasets.release_formats import read_json

SPLIT_OF = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def convert(input_path, output_dir):
    splits = {"train": [], "val": [], "test": []}
    for index, image in enumerate(tqdm(read_json(input_path)["images"], desc="images", unit="image")):
        missing = [k for k in ("filepath", "filename", "split", "sentences", "cocoid") if k not in image]
        if missing:
            raise ValueError(f"{input_path}: image {index} is missing {missing}")
        split = SPLIT_OF.get(image["split"])
        if split is None:
            raise ValueError(f"{input_path}: image {index} has unknown split {image['split']!r}")
        path = f"{image['filepath']}/{image['filename']}"
        captions = [sentence["raw"].strip() for sentence in image["sentences"]]
        if split == "train":
            splits[split] += [{"image": path, "caption": caption, "image_id": image["cocoid"]} for caption in captions]
        else:
            splits[split].append({"image": path, "caption": captions, "image_id": image["cocoid"]})
    written = {}
    for split, records in splits.items():
        written[split] = os.path.join(output_dir, f"coco_karpathy_{split}.json")
        write_json_atomic(written[split], records)
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="Karpathy's dataset_coco.json")
    parser.add_argument("--output", required=True, help="folder for coco_karpathy_{train,val,test}.json")
    args = parser.parse_args()
    for split, path in convert(args.input, args.output).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
