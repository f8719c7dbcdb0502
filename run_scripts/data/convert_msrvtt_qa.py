"""Convert the official MSRVTT-QA files (Xu et al., 2017) to the LAVIS video-QA json `msrvtt_qa_icl` reads.

Input folder (from https://github.com/xudejing/video-question-answering): ``train_qa.json``,
``val_qa.json``, ``test_qa.json`` (records ``{"answer", "category_id", "id", "question",
"video_id"}``; video_id N is clip ``video<N>.mp4`` of MSR-VTT).

    python run_scripts/data/convert_msrvtt_qa.py --input MSRVTT-QA/ --output msrvtt/annotations

Writes ``qa_{train,val,test}.json``: ``{"video": "video<N>.mp4", "question", "answer",
"question_id", "question_type", "category_id"}`` (question_type = the question word).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import question_type, read_json, write_json_atomic  # noqa: E402


def convert(input_dir, output_dir, video_ext=".mp4"):
    written = {}
    for split in ("train", "val", "test"):
        source = os.path.join(input_dir, f"{split}_qa.json")
        records = []
        for index, record in enumerate(read_json(source)):
            missing = [k for k in ("answer", "id", "question", "video_id") if k not in record]
            if missing:
                raise ValueError(f"{source}: record {index} is missing {missing}")
            converted = {
                "video": f"video{int(record['video_id'])}{video_ext}",
                "question": record["question"],
                "answer": record["answer"],
                "question_id": record["id"],
                "question_type": question_type(record["question"]),
            }
            if "category_id" in record:
                converted["category_id"] = record["category_id"]
            records.append(converted)
        written[split] = os.path.join(output_dir, f"qa_{split}.json")
        write_json_atomic(written[split], records)
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="folder with {train,val,test}_qa.json")
    parser.add_argument("--output", required=True, help="folder for qa_{train,val,test}.json")
    parser.add_argument("--video-ext", default=".mp4")
    args = parser.parse_args()
    for split, path in convert(args.input, args.output, args.video_ext).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
