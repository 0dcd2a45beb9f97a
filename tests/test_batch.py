"""annoboot.batch.ImageBatch: a batch that lost images is filled back to its size."""

from __future__ import annotations

import torch

from annoboot.data import pad_collate


def test_a_batch_that_lost_images_is_filled_back_to_its_size():
    from annoboot.batch import ImageBatch

    images = torch.arange(3, dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()
    batch = ImageBatch(images, torch.tensor([[2, 2], [1, 2], [2, 1]]), torch.tensor([5, 6, 7]), ["a", "b", "c"])
    full = batch.filled_to(5)
    assert len(full) == 5 and full.images[:, 0, 0, 0].tolist() == [0, 1, 2, 0, 1]
    assert full.sizes.tolist() == [[2, 2], [1, 2], [2, 1], [2, 2], [1, 2]]
    assert full.labels.tolist() == [5, 6, 7, 5, 6] and full.captions == ["a", "b", "c", "a", "b"]
    assert batch.filled_to(3) is batch
    # A packed batch shares its canvas: the fill repeats sizes and origins, not pixels.
    packed, _ = pad_collate([(torch.full((1, 2, 3), v, dtype=torch.uint8), None) for v in (1, 2)] + [(torch.full((1, 4, 1), 3, dtype=torch.uint8), None)])
    full = packed.filled_to(5)
    assert full.images is packed.images and [int(full.image(i)[0, 0, 0]) for i in range(5)] == [1, 2, 3, 1, 2]
