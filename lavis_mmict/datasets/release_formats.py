"""Readers of the official dataset releases, for the converters in ``run_scripts/data/`` (which
write LAVIS's annotation json from them): json reading, the question type, and the MSVD-QA /
MSRVTT-QA release format of Xu et al. (2017) both QA converters read."""
import argparse
import json
import os

from tqdm import tqdm

from lavis_mmict.atomic import write_json_atomic


def read_json(path):
    with open(path, "r") as file:
        return json.load(file)


def question_type(question):
    """The question word (what / who / how / when / where / ...): MSVD-QA and MSRVTT-QA report per type."""
    words = question.strip().lower().split()
    return words[0] if words else "other"


XU_QA_FIELDS = ("answer", "id", "question", "video_id")


def convert_xu_qa_splits(input_dir, output_dir, video_of, extra_fields=()):
    """Convert ``{train,val,test}_qa.json`` of the Xu et al. (2017) release (records
    ``{"answer", "id", "question", "video_id", ...}``) to LAVIS video-QA ``qa_<split>.json``.

    ``video_of(record, source, index)``: the clip file name of a record (the datasets differ only
    there); ``extra_fields``: record fields copied when present. Returns {split: written path}.
    """
    written = {}
    for split in ("train", "val", "test"):
        source = os.path.join(input_dir, f"{split}_qa.json")
        records = []
        for index, record in enumerate(tqdm(read_json(source), desc=f"{split}_qa.json", unit="question")):
            missing = [k for k in XU_QA_FIELDS if k not in record]
            if missing:
                raise ValueError(f"{source}: record {index} is missing {missing}")
            converted = {
                "video": video_of(record, source, index),
                "question": record["question"],
                "answer": record["answer"],
                "question_id": record["id"],
                "question_type": question_type(record["question"]),
            }
            converted.update({k: record[k] for k in extra_fields if k in record})
            records.append(converted)
        written[split] = os.path.join(output_dir, f"qa_{split}.json")
        write_json_atomic(written[split], records)
    return written


# Karpathy's caption splits (dataset_coco.json, dataset_flickr30k.json): train + restval train.
KARPATHY_SPLIT_OF = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def karpathy_split_records(input_path, image_path, image_id, required=("filename", "split", "sentences")):
    """{train, val, test: LAVIS caption records} of a Karpathy split json.

    ``image_path(image)`` / ``image_id(image)``: the record's media path and id from one entry of
    ``images`` (the datasets differ only there); ``required``: fields every entry must have.
    Training gives one record per caption ``{"image", "caption", "image_id"}``; val and test one
    record per image with all its captions, as LAVIS's files.
    """
    splits = {"train": [], "val": [], "test": []}
    for index, image in enumerate(tqdm(read_json(input_path)["images"], desc="images", unit="image")):
        missing = [k for k in required if k not in image]
        if missing:
            raise ValueError(f"{input_path}: image {index} is missing {missing}")
        split = KARPATHY_SPLIT_OF.get(image["split"])
        if split is None:
            raise ValueError(f"{input_path}: image {index} has unknown split {image['split']!r}")
        path, ident = image_path(image), image_id(image)
        captions = [sentence["raw"].strip() for sentence in image["sentences"]]
        if split == "train":
            splits[split] += [{"image": path, "caption": caption, "image_id": ident} for caption in captions]
        else:
            splits[split].append({"image": path, "caption": captions, "image_id": ident})
    return splits


def write_split_files(records_by_split, output_dir, file_name):
    """Write each split's records to ``<output_dir>/<file_name.format(split=...)>``; {split: path}."""
    written = {}
    for split, records in records_by_split.items():
        written[split] = os.path.join(output_dir, file_name.format(split=split))
        write_json_atomic(written[split], records)
    return written


def split_files_main(description, convert, input_help, output_help, argv=None):
    """The command line of a converter ``convert(input, output) -> {split: written file}``:
    ``--input`` and ``--output``, then one ``<split>: <file>`` line per split written."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help=input_help)
    parser.add_argument("--output", required=True, help=output_help)
    args = parser.parse_args(argv)
    for split, path in convert(args.input, args.output).items():
        print(f"{split}: {path}")
