"""Convert Karpathy's ``dataset_flickr30k.json`` to the LAVIS caption json `flickr30k_caption_icl` reads.

Input: ``dataset_flickr30k.json`` from Karpathy's split (https://cs.stanford.edu/people/karpathy/deepimagesent/,
``caption_datasets.zip``: ``{"images": [{"filename", "imgid", "split", "sentences": [{"raw", ...}]}]}``);
images: ``flickr30k-images/<filename>`` of the Flickr30k release.

    python run_scripts/data/convert_flickr30k_karpathy.py --input dataset_flickr30k.json --output flickr30k/annotations

Writes ``flickr30k_karpathy_{train,val,test}.json`` (29000 / 1014 / 1000 images): train one record
per caption ``{"image": "flickr30k-images/<filename>", "caption", "image_id"}``, val and test one
record per image with its 5 captions; ``image_id`` is the file name without extension (the Flickr id).
"""
import os

from lavis_mmict.datasets.release_formats import karpathy_split_records, split_files_main, write_split_files

IMAGE_FOLDER = "flickr30k-images"


def convert(input_path, output_dir):
    splits = karpathy_split_records(
        input_path, image_path=lambda image: f"{IMAGE_FOLDER}/{image['filename']}",
        image_id=lambda image: os.path.splitext(image["filename"])[0])
    return write_split_files(splits, output_dir, "flickr30k_karpathy_{split}.json")


def main():
    split_files_main(__doc__, convert, "Karpathy's dataset_flickr30k.json",
                     "folder for flickr30k_karpathy_{train,val,test}.json")


if __name__ == "__main__":
    main()
