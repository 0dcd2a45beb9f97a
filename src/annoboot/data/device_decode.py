"""Plain JPEGs decoded in batches on the training device (torchvision's decode_jpeg), on a CUDA
stream of their own, falling back to the CPU decoder (data/decode.py) for what the device
rejects; :func:`cap_short_side` caps their size there as :func:`decode_image` does on the CPU.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from annoboot.data.decode import capped_size, decode_image, failure_reason

logger = logging.getLogger(__name__)


def cap_short_side(image: torch.Tensor, max_short_side: int) -> torch.Tensor:
    """(C, H, W) uint8 -> the same with min(H, W) <= max_short_side, on its own device: an
    antialiased bilinear downscale to the size :func:`decode_image` gives (never upscaled)."""
    height, width = image.shape[-2:]
    new_width, new_height = capped_size(width, height, max_short_side)
    if (new_height, new_width) == (height, width):
        return image
    resized = F.interpolate(
        image[None].float(), size=(new_height, new_width), mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0].round_().clamp_(0, 255).to(torch.uint8)


def _torchvision_decode_jpeg(data: "torch.Tensor | List[torch.Tensor]", device: torch.device):
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _decode_in_batches(jpegs: List[torch.Tensor], device: torch.device) -> List[Optional[torch.Tensor]]:
    """torchvision's batched decode of ``jpegs`` -> their images (uncapped), None for a JPEG it
    rejects. One bad file fails the whole call, so a failed call is retried as two halves: the
    good JPEGs still decode in batches, and a bad one costs about 2 log2(n) calls, not n."""
    try:
        return list(_torchvision_decode_jpeg(jpegs, device))
    except RuntimeError:
        if len(jpegs) == 1:
            return [None]
    half = len(jpegs) // 2
    return _decode_in_batches(jpegs[:half], device) + _decode_in_batches(jpegs[half:], device)


def decode_jpegs(
    jpegs: List[torch.Tensor], device: torch.device, max_short_side: int
) -> List[Tuple[Optional[torch.Tensor], Optional[str]]]:
    """Encoded JPEGs (CPU uint8 tensors) -> [(image (3, H, W) uint8 on ``device``, short side
    capped, or None, skip reason or None)]. Batched decodes (halved on failure, see
    :func:`_decode_in_batches`); a JPEG the device decoder rejects alone is retried with the CPU
    decoder of :func:`decode_image`; what neither decodes is skipped with its reason. On CUDA,
    call it through :class:`DeviceDecoder`."""
    if not jpegs:
        return []
    # Every torchvision call before the caps and CPU fallbacks: the decoder writes without waiting
    # for work queued on the stream it allocates on, and a cap's freed temporaries are such memory.
    decoded = _decode_in_batches(list(jpegs), device)
    results: List[Tuple[Optional[torch.Tensor], Optional[str]]] = []
    for jpeg, image in zip(jpegs, decoded):
        if image is not None:
            results.append((cap_short_side(image, max_short_side), None))
            continue
        data = jpeg.numpy().tobytes()
        try:
            results.append((decode_image(io.BytesIO(data), max_short_side).to(device), None))
        except Exception as exc:
            logger.debug("undecodable JPEG of %d bytes", len(data))
            results.append((None, failure_reason(exc, len(data))))
    return results


class DeviceDecoder:
    """:func:`decode_jpegs` on ``device``; on CUDA on a stream of its own (created at first use),
    ordered against the consumer's stream (the one current when called).

    torchvision 0.29's CUDA decoder (``torch.ops.image.decode_jpegs_cuda``) allocates its outputs
    on the caller's current stream but writes them from a private stream that never waits for
    the caller's (it only host-synchronises the private one); nvJPEG's hardware engine is also
    reported to ignore device-side waits (pytorch/vision#9606). Called on the training stream, it
    can be handed a block that the previous step's backward / optimizer / EMA kernels, still
    queued, are reading. So the decode allocates from this stream's memory pool, which holds only
    this decoder's blocks, and the host first waits for this stream: none of those blocks is then
    in use (usually at no cost: that work is the previous batch's, queued a step ago). The stream
    then waits for the consumer's, decodes and caps; the consumer waits for it and records its use
    of every output, so an output's block returns to the pool only once the consumer is done with
    it. On a CPU device it is plain :func:`decode_jpegs`.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self._stream: Optional[torch.cuda.Stream] = None

    def decode(
        self, jpegs: List[torch.Tensor], max_short_side: int
    ) -> List[Tuple[Optional[torch.Tensor], Optional[str]]]:
        if self.device.type != "cuda" or not jpegs:
            return decode_jpegs(jpegs, self.device, max_short_side)
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        decode_stream, consumer = self._stream, torch.cuda.current_stream(self.device)
        decode_stream.synchronize()  # its pool's blocks are free of queued work: see the class docstring
        decode_stream.wait_stream(consumer)
        with torch.cuda.stream(decode_stream):
            results = decode_jpegs(jpegs, self.device, max_short_side)
        consumer.wait_stream(decode_stream)
        for image, _ in results:
            if image is not None:
                image.record_stream(consumer)
        return results


__all__ = ["DeviceDecoder", "cap_short_side", "decode_jpegs"]
