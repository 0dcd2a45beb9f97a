"""Video files as an image source: every ``stride``-th frame is one image (decode only).

Frames are found once by demuxing (no decoding): each video's frame timestamps, in
presentation order. ``source[i]`` seeks to the key frame before frame i's timestamp and
decodes forward to it, so random access costs at most one group of pictures, not the whole
file. Decoding uses PyAV (FFmpeg).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from annoboot.data.base import ImageSource
from annoboot.data.decode import capped_size
from annoboot.data.registry import register_source
from annoboot.errors import AnnobootError
from annoboot.option_ranges import COUNT, option

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")


def _frame_timestamps(path: str) -> List[int]:
    """Presentation timestamps of the video stream's frames (sorted), from packets alone."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        pts = [packet.pts for packet in container.demux(stream) if packet.pts is not None and packet.size > 0]
    return sorted(pts)


class VideoFramesSource(ImageSource):
    """Frames of the videos under ``root`` (or of one video file), every ``stride``-th one."""

    def __init__(self, root: str, stride: int = 1, limit: Optional[int] = None, max_short_side: int = 256):
        try:
            import av  # noqa: F401
        except ImportError:
            raise AnnobootError("video sources need PyAV: pip install av") from None
        if stride < 1:
            raise AnnobootError(f"data.<stream>.frame_stride must be >= 1, got {stride}")
        base = Path(root)
        if not base.exists():
            raise AnnobootError(f"video folder or file not found: {root}")
        named = [] if base.is_file() else sorted(p for p in base.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
        # Only regular files (or links to them) are opened: a FIFO would block the open forever.
        special = [p for p in named if not p.is_file() and not p.is_dir()]
        videos = [base] if base.is_file() else [p for p in named if p.is_file()]
        if not videos:
            raise AnnobootError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {root}")
        if special:
            log.warning("%s: skipped %d non-regular file(s) with video names (FIFOs, sockets, broken links), e.g. %s",
                        root, len(special), special[0])
        self.frames: List[Tuple[int, int]] = []  # (video index, pts)
        self.videos: List[str] = []
        unreadable = 0
        for video in map(str, videos):
            try:
                stamps = _frame_timestamps(video)
            except Exception as exc:  # an unreadable video is skipped, not fatal
                log.warning("skipping unreadable video %s: %s", video, exc)
                unreadable += 1
                continue
            self.frames.extend((len(self.videos), pts) for pts in stamps[::stride])
            self.videos.append(video)
        if unreadable:
            log.warning("%s: skipped %d unreadable video(s) of %d", root, unreadable, len(videos))
        if limit is not None:
            self.frames = self.frames[:limit]
        if not self.frames:
            raise AnnobootError(f"no decodable frames in the videos under {root}")
        self.max_short_side = max_short_side
        self.name = f"video:{root}"

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Optional[torch.Tensor]:
        import av

        video_index, target_pts = self.frames[index]
        try:
            with av.open(self.videos[video_index]) as container:
                stream = container.streams.video[0]
                container.seek(target_pts, stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    if frame.pts is not None and frame.pts >= target_pts:
                        return self._to_tensor(frame.to_ndarray(format="rgb24"))
        except Exception as exc:  # corrupt stretch of a video: counted as a skipped image
            log.debug("cannot decode frame %d of %s: %s", target_pts, self.videos[video_index], exc)
        return None

    def _to_tensor(self, rgb_hwc: np.ndarray) -> torch.Tensor:
        image = Image.fromarray(rgb_hwc)
        size = capped_size(*image.size, self.max_short_side)
        if size != image.size:
            image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        # copy(): writable, even for a 1x1 frame whose transposed view is already contiguous
        return torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())


@dataclass
class VideoOptions:
    """The options of kind video_folder."""

    frame_stride: int = option(1, COUNT)  # keep every n-th frame


@register_source("video_folder", options=VideoOptions)
def build_video_frames(cfg) -> VideoFramesSource:
    if not cfg.root:
        raise AnnobootError("video_folder needs data.<stream>.root=<folder of videos or one video file>")
    return VideoFramesSource(cfg.root, stride=cfg.frame_stride, limit=cfg.limit, max_short_side=cfg.max_short_side)
