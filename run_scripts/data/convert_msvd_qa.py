"""Convert the official MSVD-QA files (Xu et al., 2017) to the LAVIS video-QA json `msvd_qa_icl` reads.

Input folder (from https://github.com/xudejing/video-question-answering): ``train_qa.json``,
``val_qa.json``, ``test_qa.json`` (records ``{"answer", "id", "question", "video_id"}``) and
``youtube_mapping.txt`` (lines ``<youtube clip name> vid<N>``). Clips: YouTubeClips/<name>.avi.

    python run_scripts/data/convert_msvd_qa.py --input MSVD-QA/ --output msvd/annotations [--video-ext .avi]

Writes ``qa_{train,val,test}.json``: ``{"video": "<name>.avi", "question", "answer",
"question_id", "question_type"}`` (question_type = the question word).
"""
import argparse
import os

from lavis_mmict.datasets.release_formats import convert_xu_qa_splits


def read_mapping(path):
    """{video_id (int): youtube clip name} from youtube_mapping.txt."""
    mapping = {}
    with open(path) as file:
        for line_number, line in enumerate(file, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].startswith("vid"):
                raise ValueError(f"{path}:{line_number}: expected '<clip name> vid<N>', got {line.strip()!r}")
            mapping[int(parts[1][3:])] = parts[0]
    return mapping


def convert(input_dir, output_dir, video_ext=".avi"):
    mapping = read_mapping(os.path.join(input_dir, "youtube_mapping.txt"))

    def video_of(record, source, index):
        if record["video_id"] not in mapping:
            raise ValueError(f"{source}: record {index}: video_id {record['video_id']} not in youtube_mapping.txt")
        return mapping[record["video_id"]] + video_ext

    return convert_xu_qa_splits(input_dir, output_dir, video_of)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="folder with {train,val,test}_qa.json + youtube_mapping.txt")
    parser.add_argument("--output", required=True, help="folder for qa_{train,val,test}.json")
    parser.add_argument("--video-ext", default=".avi", help="extension of the clip files (.avi, or .mp4 if re-encoded)")
    args = parser.parse_args()
    for split, path in convert(args.input, args.output, args.video_ext).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
