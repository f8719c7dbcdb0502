"""Convert Karpathy's ``dataset_coco.json`` to the LAVIS caption json `coco_caption_icl` reads.

Input: ``dataset_coco.json`` from Karpathy's split (https://cs.stanford.edu/people/karpathy/deepimagesent/,
``caption_datasets.zip``); images: COCO train2014 + val2014 under one folder.

    python run_scripts/data/convert_coco_karpathy.py --input dataset_coco.json --output coco/annotations

Writes ``coco_karpathy_{train,val,test}.json``: train (Karpathy ``train`` + ``restval``) one
record per caption ``{"image": "val2014/COCO_val2014_....jpg", "caption", "image_id"}``; val and
test one record per image with all its captions (``"caption": [...]``), as LAVIS's files.
"""

from lavis_mmict.datasets.release_formats import karpathy_split_records, split_files_main, write_split_files


def convert(input_path, output_dir):
    splits = karpathy_split_records(
        input_path, image_path=lambda image: f"{image['filepath']}/{image['filename']}",
        image_id=lambda image: image["cocoid"], required=("filepath", "filename", "split", "sentences", "cocoid"))
    return write_split_files(splits, output_dir, "coco_karpathy_{split}.json")


def main():
    split_files_main(__doc__, convert, "Karpathy's dataset_coco.json",
                     "folder for coco_karpathy_{train,val,test}.json")


if __name__ == "__main__":
    main()
