"""Probes on constructed cases with known answers, on raw Fashion-MNIST pixels, and export."""

import pytest
import timm
import torch

from annoboot.config import EvalConfig, SourceConfig
from annoboot.data import build_source
from annoboot.errors import AnnobootError
from annoboot.eval import evaluate, format_results_table
from annoboot.eval.features import extract_features
from annoboot.eval.knn import knn_accuracy, knn_predict
from annoboot.eval.linear import linear_probe
from annoboot.eval.map_probe import map_probe
from annoboot.export import export_backbone
from annoboot.models import build_encoder
from annoboot.views import Normalize
from conftest import needs_fmnist


def test_knn_two_clusters_and_similarity_weighting():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    test = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    assert knn_predict(train, labels, test, num_classes=2, k=3).tolist() == [0, 1]
    # k covers all four train rows (2 per class): the nearer class must win by its weights.
    assert knn_predict(train, labels, torch.tensor([[0.8, 0.3]]), num_classes=2, k=4, temperature=0.07).tolist() == [0]
    assert knn_accuracy(train, labels, test, torch.tensor([0, 1]), num_classes=2, k=3) == pytest.approx(100.0)


def test_linear_probe_separates_separable_data():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 3
    y = torch.randint(0, 4, (1200,), generator=g)
    x = centres[y] + torch.randn(1200, 16, generator=g)
    out = linear_probe(x[:1000], y[:1000], x[1000:], y[1000:], num_classes=4, epochs=10)
    assert out["test_acc"] > 95
    assert out["best_lr"] in (1e-3, 3e-3, 1e-2)


def test_map_probe_finds_the_one_informative_token():
    # Every token is some class's key; only the token carrying the marker holds the true class.
    # Mean pooling sees a mixture of classes; attention pooling can attend to the marker.
    g = torch.Generator().manual_seed(0)
    n, t, d, classes = 2000, 8, 32, 4
    keys = torch.randn(classes, d, generator=g)
    marker = torch.randn(d, generator=g) * 3
    y = torch.randint(0, classes, (n,), generator=g)
    tokens = keys[torch.randint(0, classes, (n, t), generator=g)] * 2 + 0.5 * torch.randn(n, t, d, generator=g)
    tokens[torch.arange(n), torch.randint(0, t, (n,), generator=g)] = keys[y] * 2 + marker
    tr, te = slice(0, 1600), slice(1600, n)
    out = map_probe(tokens[tr].half(), y[tr], tokens[te].half(), y[te], classes, epochs=30, lrs=(3e-3,), batch_size=128)
    mean_pooled = linear_probe(tokens[tr].mean(1), y[tr], tokens[te].mean(1), y[te], classes, epochs=30)
    assert out["test_acc"] > 95, out
    assert out["test_acc"] > mean_pooled["test_acc"] + 20, (out, mean_pooled)


@needs_fmnist
def test_linear_probe_on_raw_fashion_mnist_pixels_beats_70_percent():
    train = build_source(SourceConfig(kind="fashion_mnist", split="train", limit=5000))
    test = build_source(SourceConfig(kind="fashion_mnist", split="test", limit=1000))
    x = lambda s: s.in_memory().flatten(1).float() / 255  # noqa: E731
    out = linear_probe(x(train), train.labels, x(test), test.labels, num_classes=10, epochs=10)
    assert out["test_acc"] > 70


@needs_fmnist
def test_evaluate_runs_all_probes_and_restores_train_mode():
    encoder = build_encoder("vit_tiny_patch16_224", 32, {"patch_size": 8, "depth": 1}).train()
    cfg = EvalConfig(
        train=SourceConfig(kind="fashion_mnist", split="train", limit=600),
        test=SourceConfig(kind="fashion_mnist", split="test", limit=200),
        linear_epochs=3, map_epochs=2,
    )
    results = evaluate(encoder, build_source(cfg.train), build_source(cfg.test), cfg, 32, Normalize([0.5] * 3, [0.5] * 3), "cpu")
    assert encoder.training
    assert set(results) >= {"knn", "linear", "map", "num_train", "num_test"}
    assert results["num_train"] == 600 and results["num_test"] == 200
    for probe in ("knn", "linear", "map"):
        assert 20 < results[probe] <= 100  # far above chance (10%) even untrained
    table = format_results_table(results, "title")
    assert "knn" in table and "map" in table


def test_extract_features_shapes(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (20 + i, 30), (40 * i, 100, 7)).save(tmp_path / cls / f"{i}.png")
    source = build_source(SourceConfig(kind="image_folder", root=str(tmp_path), labels_from_subfolders=True))
    encoder = build_encoder("vit_tiny_patch16_224", 32, {"patch_size": 8, "depth": 1})
    feats = extract_features(encoder, source, 32, Normalize([0.5] * 3, [0.5] * 3), batch_size=4, keep_tokens=True)
    assert feats.pooled.shape == (6, 192) and feats.tokens.shape == (6, 16, 192)
    assert feats.tokens.dtype == torch.float16 and feats.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_evaluate_rejects_unlabelled_sources(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    source = build_source(SourceConfig(kind="image_folder", root=str(tmp_path)))
    encoder = build_encoder("vit_tiny_patch16_224", 32, {"patch_size": 8, "depth": 1})
    with pytest.raises(AnnobootError, match="labels_from_subfolders"):
        evaluate(encoder, source, source, EvalConfig(), 32, Normalize([0.5] * 3, [0.5] * 3), "cpu")


@pytest.mark.parametrize("name,kwargs", [("vit_tiny_patch16_224", {"patch_size": 8, "depth": 2}), ("resnet18", {})])
def test_export_loads_in_plain_timm_with_identical_features(tmp_path, name, kwargs):
    torch.manual_seed(0)
    encoder = build_encoder(name, 32, kwargs).eval()
    path = export_backbone(encoder, tmp_path / "b.safetensors", encoder.backbone_name, encoder.create_kwargs)
    model = timm.create_model(name, pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=dict(file=str(path)), **encoder.create_kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), encoder(x).pooled, atol=1e-5)
