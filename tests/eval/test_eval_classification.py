"""annoboot.eval.classification.evaluate: the asked probes, their table, and sources without labels."""

from __future__ import annotations

import json

import pytest
from helpers import (
    TensorSource,
    needs_fmnist,
    one_thread,  # noqa: F401  (an autouse fixture: tiny workloads run on one thread)
    tiny_vit,
)

import annoboot.eval.classification
from annoboot.config import EvalConfig, SourceConfig
from annoboot.data import build_source
from annoboot.errors import AnnobootError
from annoboot.eval import evaluate, extract_features, format_results_table
from annoboot.models.encoder import build_encoder
from annoboot.views import Normalize


def test_evaluate_runs_the_asked_probes_and_tables_them(monkeypatch):
    encoder = tiny_vit(16)
    cfg = EvalConfig(batch_size=8, linear_epochs=3, map_epochs=2, knn_k=5)
    normalize = Normalize([0.5] * 3, [0.5] * 3)
    results = evaluate(encoder, TensorSource(60, seed=0), TensorSource(30, seed=1), cfg, 16, normalize, "cpu")
    assert {"knn", "linear", "map"} <= set(results)
    assert all(0 <= results[probe] <= 100 for probe in ("knn", "linear", "map"))
    assert results["num_train"] == 60 and results["num_test"] == 30
    assert results["details"]["map"]["num_tokens"] == 16
    json.dumps(results)  # written to eval.json as is
    table = format_results_table(results, "tiny run")
    assert table.splitlines()[0] == "tiny run"
    assert all(probe in table for probe in ("knn", "linear", "map"))

    kept_tokens = []

    def spy(*args, **kwargs):
        features = extract_features(*args, **kwargs)
        kept_tokens.append(features.tokens is not None)
        return features

    monkeypatch.setattr(annoboot.eval.classification, "extract_features", spy)
    cfg.probes = ["knn", "linear"]
    pooled_only = evaluate(encoder, TensorSource(60), TensorSource(30, seed=1), cfg, 16, normalize, "cpu")
    assert "map" not in pooled_only and "map" not in pooled_only["details"]
    assert kept_tokens == [False, False]  # tokens are extracted only for the MAP probe


@needs_fmnist
def test_evaluate_on_fashion_mnist_beats_chance_with_a_random_encoder():
    encoder = build_encoder("vit_tiny_patch16_224", 32, {"patch_size": 8, "depth": 1})
    cfg = EvalConfig(
        train=SourceConfig(kind="fashion_mnist", split="train", limit=600),
        test=SourceConfig(kind="fashion_mnist", split="test", limit=200),
        linear_epochs=3,
        map_epochs=2,
    )
    normalize = Normalize([0.5] * 3, [0.5] * 3)
    results = evaluate(encoder, build_source(cfg.train), build_source(cfg.test), cfg, 32, normalize, "cpu")
    assert results["num_train"] == 600 and results["num_test"] == 200
    for probe in ("knn", "linear", "map"):
        assert 20 < results[probe] <= 100  # chance is 10%: even random features carry the classes


def test_evaluate_names_the_source_without_labels_and_the_fix(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    folder = build_source(SourceConfig(kind="image_folder", root=str(tmp_path)))
    with pytest.raises(AnnobootError, match="labels_from_subfolders"):
        evaluate(tiny_vit(16), folder, folder, EvalConfig(), 16, Normalize([0.5] * 3, [0.5] * 3), "cpu")

    encoder = tiny_vit(16)
    unlabelled = TensorSource(20, labelled=False, seed=3)
    with pytest.raises(AnnobootError, match="tensors/3.*no labels"):
        evaluate(encoder, TensorSource(20), unlabelled, EvalConfig(), 16, Normalize([0.5] * 3, [0.5] * 3), "cpu")
