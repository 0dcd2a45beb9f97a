"""annoboot.eval.features: extracting pooled features and tokens, in order."""

from __future__ import annotations

import torch
from helpers import (
    TensorSource,
    one_thread,  # noqa: F401  (an autouse fixture: tiny workloads run on one thread)
    tiny_vit,
)

from annoboot.config import SourceConfig
from annoboot.data import build_source
from annoboot.eval import extract_features
from annoboot.views import Normalize


def test_extract_features_shapes_dtypes_order_and_restores_train_mode():
    encoder = tiny_vit(16)
    encoder.train()
    source = TensorSource(10)
    features = extract_features(encoder, source, 16, Normalize([0.5] * 3, [0.5] * 3), batch_size=4, keep_tokens=True)
    assert encoder.training
    assert features.pooled.shape == (10, encoder.width) and features.pooled.dtype == torch.float32
    assert features.tokens is not None
    assert features.tokens.shape == (10, 16, encoder.width) and features.tokens.dtype == torch.float16
    assert torch.equal(features.labels, source.labels)
    # Batching must not change a row: the same image alone gives the same vector.
    alone = extract_features(encoder, source, 16, Normalize([0.5] * 3, [0.5] * 3), batch_size=1)
    assert alone.tokens is None
    torch.testing.assert_close(alone.pooled, features.pooled, atol=1e-5, rtol=1e-4)

    encoder.eval()
    extract_features(encoder, source, 16, Normalize([0.5] * 3, [0.5] * 3), batch_size=4)
    assert not encoder.training


def test_extract_features_reads_an_image_folder_of_mixed_sizes_in_order(tmp_path):
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (20 + i, 30), (40 * i, 100, 7)).save(tmp_path / name / f"{i}.png")
    source = build_source(SourceConfig(kind="image_folder", root=str(tmp_path), labels_from_subfolders=True))
    encoder = tiny_vit(16)
    features = extract_features(encoder, source, 16, Normalize([0.5] * 3, [0.5] * 3), batch_size=4, keep_tokens=True)
    assert features.pooled.shape == (6, encoder.width) and features.tokens.shape == (6, 16, encoder.width)
    assert features.labels.tolist() == [0, 0, 0, 1, 1, 1]
