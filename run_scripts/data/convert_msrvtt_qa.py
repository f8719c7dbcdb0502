"""Convert the official MSRVTT-QA files (Xu et al., 2017) to the LAVIS video-QA json `msrvtt_qa_icl` reads.

Input folder (from https://github.com/xudejing/video-question-answering): ``train_qa.json``,
``val_qa.json``, ``test_qa.json`` (records ``{"answer", "category_id", "id", "question",
"video_id"}``; video_id N is clip ``video<N>.mp4`` of MSR-VTT).

    python run_scripts/data/convert_msrvtt_qa.py --input MSRVTT-QA/ --output msrvtt/annotations

Writes ``qa_{train,val,test}.json``: ``{"video": "video<N>.mp4", "question", "answer",
"question_id", "question_type", "category_id"}`` (question_type = the question word).
"""
import argparse

from lavis_mmict.datasets.release_formats import convert_xu_qa_splits


def convert(input_dir, output_dir, video_ext=".mp4"):
    return convert_xu_qa_splits(
        input_dir, output_dir,
        video_of=lambda record, source, index: f"video{int(record['video_id'])}{video_ext}",
        extra_fields=("category_id",),
    )


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
