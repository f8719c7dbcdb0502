"""Loading videos and images into frame tensors.

Decoding (decord for video files, with OpenCV as the fallback for files decord cannot decode, PIL
for images and for folders of pre-extracted frames, one folder per clip) gives PIL frames; a LAVIS image processor
(``blip_image_eval``, ``blip2_image_train``, ...) then turns each frame into a (3, H, W) tensor and
the frames are stacked to (F, 3, H, W). An image is a one-frame clip (F = 1).

Every failure to read a file (missing, empty, undecodable) raises ``MediaError`` naming the path.
:func:`probe_media` is the cheap check run before training (the container and the first frame).
"""
import os
from typing import Callable, List

import numpy as np
import torch
from PIL import Image

VIDEO_SAMPLING_MODES = ("uniform", "headtail")


class MediaError(ValueError):
    """A video or image file is missing or cannot be decoded; the message names the path.

    Re-raised from a DataLoader worker, it keeps the original message (torch prepends "Caught
    MediaError in DataLoader worker process N" and the worker's traceback), so train.py and
    evaluate.py still report it in one line.
    """

    def __init__(self, message=""):
        marker = f"\n{__name__}.MediaError: "
        if isinstance(message, str) and message.startswith("Caught MediaError ") and marker in message:
            where = message.split(".\n", 1)[0][len("Caught MediaError "):]
            message = f"{message.rpartition(marker)[2].rstrip()} ({where})"
        super().__init__(message)


def frame_indices(num_video_frames: int, num_frames: int, sampling: str = "uniform") -> np.ndarray:
    """Indices of ``num_frames`` frames out of a clip of ``num_video_frames`` frames.

    ``uniform``: the centre frame of each of ``num_frames`` equal segments. ``headtail``: half of
    the frames uniformly from the first half of the clip, the rest from the second half
    (deterministic, unlike LAVIS's random headtail). A clip shorter than ``num_frames`` repeats
    frames, so every clip yields exactly ``num_frames`` frames.
    """
    if sampling not in VIDEO_SAMPLING_MODES:
        raise ValueError(f"Unknown frame sampling {sampling!r}; valid: {list(VIDEO_SAMPLING_MODES)}")
    if num_frames < 1 or num_video_frames < 1:
        raise ValueError(f"Need >= 1 frame (clip has {num_video_frames}, asked {num_frames})")
    if sampling == "uniform" or num_frames == 1 or num_video_frames == 1:
        return _segment_centres(0, num_video_frames, num_frames)
    half = num_video_frames // 2
    head = _segment_centres(0, half, num_frames // 2)
    tail = _segment_centres(half, num_video_frames, num_frames - num_frames // 2)
    return np.concatenate([head, tail])


def _segment_centres(start: int, end: int, count: int) -> np.ndarray:
    length = end - start
    return start + ((np.arange(count) + 0.5) * length / count).astype(np.int64).clip(0, length - 1)


def _check_file(path: str, kind: str):
    if not os.path.isfile(path):
        raise MediaError(f"{kind} file not found: {path}")
    if os.path.getsize(path) == 0:
        raise MediaError(f"{kind} file is empty (0 bytes): {path}")


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def frame_folder_for(path: str):
    """The folder of pre-extracted frames standing for the clip at ``path``, or None.

    ``<root>/<video>`` itself when it is a folder; otherwise, when ``<root>/<video>`` does not
    exist, ``<root>/<video without extension>`` if that is a folder (annotations that name
    ``video7010.mp4`` then read ``video7010/``, the layout ``run_scripts/data/extract_frames.py``
    writes).
    """
    if os.path.isdir(path):
        return path
    stem = os.path.splitext(path)[0]
    if not os.path.exists(path) and stem != path and os.path.isdir(stem):
        return stem
    return None


def resize_frames(frames: List[Image.Image], decode_size) -> List[Image.Image]:
    """Frames resized to ``decode_size`` (None: unchanged; an int: square; [height, width]).

    Done with PIL after decoding: decord's own resizing fails on some frame sizes.
    """
    if decode_size is None:
        return frames
    if isinstance(decode_size, int):
        height = width = decode_size
    else:
        height, width = (int(v) for v in decode_size)
    return [frame.resize((width, height), Image.BICUBIC) for frame in frames]


def load_frame_folder(folder: str, num_frames: int, sampling: str = "uniform", decode_size=None) -> List[Image.Image]:
    """``num_frames`` RGB frames out of a folder of images (sorted by file name) standing for a clip."""
    names = sorted(name for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise MediaError(f"Frame folder has no image files ({', '.join(IMAGE_EXTENSIONS)}): {folder}")
    frames = [load_image(os.path.join(folder, names[i])) for i in frame_indices(len(names), num_frames, sampling)]
    return resize_frames(frames, decode_size)


def load_video_frames(path: str, num_frames: int, sampling: str = "uniform", decode_size=None) -> List[Image.Image]:
    """Decode ``num_frames`` RGB frames (PIL images) of the clip at ``path``.

    A video file is decoded with decord, a frame folder (see ``frame_folder_for``) read with PIL;
    ``decode_size`` resizes the frames right away (see ``resize_frames``). A clip with fewer frames
    than ``num_frames`` repeats frames (see ``frame_indices``).
    """
    folder = frame_folder_for(path)
    if folder is not None:
        return load_frame_folder(folder, num_frames, sampling, decode_size)

    _check_file(path, "Video")
    sampled = _decode_video(path, lambda length: frame_indices(length, num_frames, sampling))
    return resize_frames([Image.fromarray(frame) for frame in sampled], decode_size)


def _decode_video(path: str, pick: Callable[[int], np.ndarray], opencv_first: bool = False) -> np.ndarray:
    """Frames ``pick(number of frames)`` of the video file at ``path``: (F, H, W, 3) uint8 RGB.

    decord first; a file decord cannot read (it fails on some valid files, e.g. 48x48 mp4v clips
    written by OpenCV: "DECORDArrayCopyFromTo: The size must exactly match") is read with OpenCV
    before it is declared bad (``opencv_first``: the other way round). The MediaError names both
    decoders' reasons.
    """
    decoders = [("decord", _decode_with_decord), ("opencv", _decode_with_opencv)]
    reasons = []
    for name, decode in decoders[::-1] if opencv_first else decoders:
        try:
            return decode(path, pick)
        except Exception as error:  # decord raises bare RuntimeError / DECORDError
            reasons.append(f"{name}: {_reason(error)}")
    raise MediaError(f"Cannot decode video {path}: {'; '.join(reasons)}")


def _reason(error: Exception) -> str:
    """The last line of a decoder's message (decord's carry a source location and a stack)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _decode_with_decord(path: str, pick) -> np.ndarray:
    import decord

    # One decoding thread: data loaders already run one process per core.
    reader = decord.VideoReader(path, num_threads=1)
    if len(reader) == 0:
        raise MediaError("no frames")
    batch = reader.get_batch(np.asarray(pick(len(reader))).tolist())
    # LAVIS sets decord's bridge to torch on import; the native bridge returns an NDArray.
    return batch.numpy() if torch.is_tensor(batch) else batch.asnumpy()


def _decode_with_opencv(path: str, pick) -> np.ndarray:
    """Read sequentially (OpenCV's seeking is not frame-exact for every codec); a header frame
    count larger than the frames really decodable is corrected and the indices picked again."""
    import cv2

    length = None
    for _ in range(2):
        capture = cv2.VideoCapture(path)
        try:
            if not capture.isOpened():
                raise MediaError("cannot open the file")
            if length is None:
                length = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            if length < 1:
                length = _count_frames(capture)
                continue  # the capture is consumed: reopen
            indices = np.asarray(pick(length))
            wanted, frames, position = set(indices.tolist()), {}, 0
            while position <= indices.max() and capture.grab():
                if position in wanted:
                    ok, frame = capture.retrieve()
                    if not ok:
                        raise MediaError(f"cannot decode frame {position}")
                    frames[position] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                position += 1
            if len(frames) == len(wanted):
                return np.stack([frames[i] for i in indices.tolist()])
            length = position  # fewer frames than the header said
        finally:
            capture.release()
        if length < 1:
            break
    raise MediaError("no decodable frames")


def _count_frames(capture) -> int:
    count = 0
    while capture.grab():
        count += 1
    return count


def probe_media(path: str, is_video: bool = True):
    """Check cheaply that the media at ``path`` can be read: a video's container and its first
    frame, a frame folder's first image, an image; MediaError naming the path otherwise. Nothing
    past the first frame is decoded; OpenCV first (opening a file and decoding its first frame
    takes it about 1 ms, decord about 9 ms), then decord, the two decoders loading falls back on."""
    if not is_video:
        load_image(path)
        return
    folder = frame_folder_for(path)
    if folder is not None:
        load_frame_folder(folder, 1, "uniform")
        return
    _check_file(path, "Video")
    _decode_video(path, lambda length: np.zeros(1, dtype=np.int64), opencv_first=True)


def load_image(path: str) -> Image.Image:
    """Read the image at ``path`` as an RGB PIL image."""
    _check_file(path, "Image")
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, naming its path
            return image.convert("RGB")
    except Exception as error:
        raise MediaError(f"Cannot decode image {path}: {error}") from error


def media_stamp(path: str):
    """What identifies the content of the media at ``path`` without reading it: [size, mtime_ns] of a
    file, or [[name, size, mtime_ns], ...] of the image files of a frame folder; None if absent."""
    folder = frame_folder_for(path)
    try:
        if folder is not None:
            names = sorted(name for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS))
            stamps = []
            for name in names:
                stat = os.stat(os.path.join(folder, name))
                stamps.append([name, stat.st_size, stat.st_mtime_ns])
            return stamps
        stat = os.stat(path)
        return [stat.st_size, stat.st_mtime_ns]
    except OSError:
        return None


def frames_to_tensor(frames: List[Image.Image], vis_processor: Callable) -> torch.Tensor:
    """Apply a LAVIS image processor to each PIL frame; returns (F, 3, H, W) float."""
    return torch.stack([vis_processor(frame) for frame in frames])


def load_visual(path: str, vis_processor: Callable, num_frames: int = 1, is_video: bool = True,
                sampling: str = "uniform", decode_size=None) -> torch.Tensor:
    """Frames of one clip (``is_video``) or one image, processed: (F, 3, H, W); images give F = 1."""
    frames = load_video_frames(path, num_frames, sampling, decode_size) if is_video else [load_image(path)]
    return frames_to_tensor(frames, vis_processor)
