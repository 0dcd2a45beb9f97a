"""Video files as frames: a short video written by the test itself."""

import numpy as np
import pytest
import torch

from annoboot.config import SourceConfig
from annoboot.data import build_source
from annoboot.data.stream import BatchStream
from annoboot.errors import AnnobootError

av = pytest.importorskip("av", reason="PyAV not installed (pip install av)")


def write_video(path, num_frames=24, size=(64, 48)):
    """Frame i is a flat grey of brightness 8 * i: a decoded frame tells its own index."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.gop_size = 6  # key frames every 6 frames: seeking must decode forward
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), 8 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_frames_with_stride_decode_to_the_right_frame(tmp_path):
    write_video(tmp_path / "clip.mp4")
    source = build_source(SourceConfig(kind="video_folder", root=str(tmp_path), frame_stride=3, max_short_side=32))
    assert len(source) == 8  # frames 0, 3, ..., 21
    for k in (0, 3, 5, 7):  # random access, including after key frames
        frame = source[k]
        assert frame.shape == (3, 32, 43) and frame.dtype == torch.uint8  # short side capped
        assert abs(frame.float().mean().item() - 8 * 3 * k) < 6, k
    batch = next(BatchStream(source, 4, seed=0))
    assert batch.images.shape[:2] == (4, 3)


def test_missing_or_empty_video_folder_is_named(tmp_path):
    with pytest.raises(AnnobootError, match="nowhere"):
        build_source(SourceConfig(kind="video_folder", root=str(tmp_path / "nowhere")))
    with pytest.raises(AnnobootError, match="no video files"):
        build_source(SourceConfig(kind="video_folder", root=str(tmp_path)))
