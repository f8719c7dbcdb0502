"""Extract frames of every video in a folder into one folder of jpgs per clip.

    python run_scripts/data/extract_frames.py --videos msrvtt/videos --output msrvtt/frames \
        [--num-frames 16] [--size 256] [--workers 8]

``<output>/<clip name without extension>/frame_0000.jpg ...``: ``--num-frames`` frames sampled
uniformly (segment centres; 0 = every frame), the shorter side resized to ``--size`` (0 = native).
Point ``build_info.videos.storage`` at ``<output>``: a record naming ``video7010.mp4`` then reads
``video7010/`` (see lavis_mmict/datasets/media.py). Each clip is written to a temporary folder and
renamed when complete; existing complete clips are skipped, so an interrupted run can be resumed.
Unreadable videos are listed at the end (exit status 1), the others are still extracted.
"""
import argparse
import os
import sys
from multiprocessing import Pool

from tqdm import tqdm

from lavis_mmict.atomic import atomic_output

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".3gp")


def extract_clip(video_path, output_dir, num_frames=16, size=256):
    """Write the frames of one clip; returns (video_path, None) or (video_path, error message)."""
    import decord
    import numpy as np
    from PIL import Image

    name = os.path.splitext(os.path.basename(video_path))[0]
    target = os.path.join(output_dir, name)
    if os.path.isdir(target):
        return video_path, None
    try:
        reader = decord.VideoReader(video_path, num_threads=1)
        total = len(reader)
        if total == 0:
            return video_path, "no frames"
        count = total if num_frames <= 0 else num_frames
        indices = ((np.arange(count) + 0.5) * total / count).astype(np.int64).clip(0, total - 1)
        frames = reader.get_batch(indices.tolist())
        frames = frames.numpy() if hasattr(frames, "numpy") and not hasattr(frames, "asnumpy") else frames.asnumpy()
        with atomic_output(target) as temporary:  # a folder, renamed onto target when complete
            os.makedirs(temporary)
            for position, frame in enumerate(frames):
                image = Image.fromarray(frame)
                if size > 0:
                    scale = size / min(image.size)
                    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                         Image.BICUBIC)
                image.save(os.path.join(temporary, f"frame_{position:04d}.jpg"), quality=95)
        return video_path, None
    except Exception as error:  # reported per clip; one bad file does not stop the others
        return video_path, str(error)


def extract_all(videos_dir, output_dir, num_frames=16, size=256, workers=1):
    """Extract every video of ``videos_dir``; returns {video path: error} for the failures."""
    os.makedirs(output_dir, exist_ok=True)
    videos = sorted(os.path.join(videos_dir, name) for name in os.listdir(videos_dir)
                    if name.lower().endswith(VIDEO_EXTENSIONS))
    jobs = [(video, output_dir, num_frames, size) for video in videos]
    failures = {}
    with tqdm(total=len(jobs), desc="extracting frames", unit="clip") as progress:  # with the time left
        with Pool(workers) if workers > 1 else _InProcess() as pool:
            for video, error in pool.imap_unordered(_extract_job, jobs):
                if error:
                    failures[video] = error
                progress.update()
    return dict(sorted(failures.items()))


class _InProcess:
    """``Pool``'s ``imap_unordered`` in this process (``--workers 1``)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def imap_unordered(function, jobs):
        return map(function, jobs)


def _extract_job(job):
    return extract_clip(*job)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    failures = extract_all(args.videos, args.output, args.num_frames, args.size, args.workers)
    for video, error in failures.items():
        print(f"FAILED {video}: {error}", file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
