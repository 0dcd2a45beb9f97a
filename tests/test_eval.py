"""Specifications of the evaluation package: kNN, linear and MAP probes, feature extraction,
the evaluate() entry point and the timm export."""

from __future__ import annotations

import json
import math
import pytest
import timm
import torch

import annoboot.eval
from annoboot.config import EvalConfig, SourceConfig
from annoboot.data import build_source
from annoboot.data.base import ImageSource
from annoboot.errors import AnnobootError
from annoboot.eval import evaluate, extract_features, format_results_table
from annoboot.eval.knn import knn_accuracy, knn_predict
from annoboot.eval.linear import linear_probe
from annoboot.eval.map_probe import MAPHead, default_num_heads, map_probe
from annoboot.export import export_backbone, load_snippet, metadata_path
from annoboot.models.encoder import build_encoder
from annoboot.views import Normalize
from conftest import needs_fmnist

TINY_VIT = ("vit_tiny_patch16_224", {"patch_size": 4, "depth": 2})


@pytest.fixture(autouse=True)
def one_thread():
    # These workloads are tiny: a second OpenMP thread only adds overhead, and on a busy
    # 2-core machine spinning threads slow small ops down a hundredfold.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TensorSource(ImageSource):
    """Synthetic labelled images: class c is a flat image of grey level 40 + 50 c, plus noise."""

    def __init__(self, num_images: int, num_classes: int = 3, side: int = 12, labelled: bool = True, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        labels = torch.arange(num_images) % num_classes
        noise = torch.randint(-10, 11, (num_images, 3, side, side), generator=generator)
        self._images = (40 + 50 * labels.view(-1, 1, 1, 1) + noise).clamp(0, 255).to(torch.uint8)
        self.labels = labels if labelled else None
        self.name = f"tensors/{seed}"

    def __len__(self) -> int:
        return self._images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._images[index]

    def in_memory(self) -> torch.Tensor:
        return self._images


def tiny_vit(img_size: int = 16):
    torch.manual_seed(0)
    return build_encoder(TINY_VIT[0], img_size, TINY_VIT[1])


# --- kNN -----------------------------------------------------------------------------------


def test_knn_assigns_points_to_the_label_of_their_cluster():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.95, -0.1], [0.0, 1.0], [0.1, 0.9], [-0.1, 0.95]])
    train_labels = torch.tensor([0, 0, 0, 1, 1, 1])
    test = torch.tensor([[2.0, 0.1], [0.2, 3.0], [0.8, -0.2]])  # scale does not matter: cosine
    assert knn_predict(train, train_labels, test, num_classes=2, k=3).tolist() == [0, 1, 0]
    accuracy = knn_accuracy(train, train_labels, test, torch.tensor([0, 1, 1]), num_classes=2, k=3)
    assert accuracy == pytest.approx(200 / 3)


def test_knn_weighting_lets_the_nearer_class_win_a_tied_vote():
    # One neighbour of each class: counts tie 1-1. The class-1 point is nearer; an unweighted
    # vote (or argmax's tie-break) would pick class 0.
    train = torch.tensor([[math.cos(0.1), math.sin(0.1)], [math.cos(0.6), math.sin(0.6)]])
    train_labels = torch.tensor([1, 0])
    test = torch.tensor([[1.0, 0.0]])
    assert knn_predict(train, train_labels, test, num_classes=2, k=2, temperature=0.07).tolist() == [1]


def test_knn_with_k_above_the_train_size_uses_every_train_point():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[1.0, 0.05]])
    # With all three neighbours and a large temperature the vote is nearly a count: 2 x class 1.
    assert knn_predict(train, labels, test, num_classes=2, k=50, temperature=100.0).tolist() == [1]


def test_knn_chunking_does_not_change_predictions():
    generator = torch.Generator().manual_seed(0)
    train, test = torch.randn(200, 8, generator=generator), torch.randn(37, 8, generator=generator)
    labels = torch.randint(0, 5, (200,), generator=generator)
    whole = knn_predict(train, labels, test, 5, chunk_size=1024)
    assert torch.equal(whole, knn_predict(train, labels, test, 5, chunk_size=4))


# --- linear probe --------------------------------------------------------------------------


def separable_data(num: int, dim: int = 16, num_classes: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(99))
    labels = torch.randint(0, num_classes, (num,), generator=generator)
    return centres[labels] + torch.randn(num, dim, generator=generator), labels


def test_linear_probe_separates_separable_classes_and_is_deterministic():
    train_x, train_y = separable_data(1000, seed=0)
    test_x, test_y = separable_data(300, seed=1)
    result = linear_probe(train_x, train_y, test_x, test_y, num_classes=4, epochs=10, batch_size=128)
    assert result["test_acc"] > 95
    assert result["best_lr"] in (1e-3, 3e-3, 1e-2)
    assert set(result["val_acc_by_lr"]) == {"0.001", "0.003", "0.01"}
    again = linear_probe(train_x, train_y, test_x, test_y, num_classes=4, epochs=10, batch_size=128)
    assert again == result


@needs_fmnist
def test_linear_probe_on_fashion_mnist_pixels_beats_70_percent():
    train = build_source(SourceConfig(kind="fashion_mnist", split="train", limit=5000))
    test = build_source(SourceConfig(kind="fashion_mnist", split="test", limit=1000))
    pixels = lambda source: source.in_memory().flatten(1).float() / 255  # noqa: E731
    result = linear_probe(
        pixels(train), train.labels, pixels(test), test.labels, num_classes=10, epochs=10, batch_size=256
    )
    assert result["test_acc"] > 70


# --- MAP probe -----------------------------------------------------------------------------


def pointer_tokens(num: int, seed: int, num_tokens: int = 16, dim: int = 32, num_classes: int = 4):
    """Every token is a noisy class prototype; the class of the example is the prototype of the
    one token carrying a marker, at a random position. Mean pooling sees mostly distractors."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123))
    marker = 3 * torch.randn(dim, generator=torch.Generator().manual_seed(7))
    labels = torch.randint(0, num_classes, (num,), generator=generator)
    distractors = torch.randint(0, num_classes, (num, num_tokens), generator=generator)
    tokens = prototypes[distractors] + 0.3 * torch.randn(num, num_tokens, dim, generator=generator)
    position = torch.randint(0, num_tokens, (num,), generator=generator)
    tokens[torch.arange(num), position] = prototypes[labels] + marker + 0.3 * torch.randn(num, dim, generator=generator)
    return tokens.half(), labels


def test_map_probe_finds_the_class_token_that_mean_pooling_drowns():
    train_tokens, train_y = pointer_tokens(1000, seed=0)
    test_tokens, test_y = pointer_tokens(400, seed=1)
    result = map_probe(train_tokens, train_y, test_tokens, test_y, 4, lrs=(1e-3, 3e-3), epochs=20, batch_size=64)
    mean_pooled = linear_probe(train_tokens.float().mean(1), train_y, test_tokens.float().mean(1), test_y, 4)
    assert result["test_acc"] > 90  # chance is 25
    assert mean_pooled["test_acc"] < 60


def test_map_head_shapes_and_default_heads():
    assert [default_num_heads(d) for d in (192, 36, 20, 9, 14, 7)] == [8, 6, 4, 3, 2, 1]
    head = MAPHead(dim=12, num_classes=5)
    assert head.attention.num_heads == 6
    assert head(torch.randn(3, 7, 12)).shape == (3, 5)


# --- feature extraction and evaluate() -----------------------------------------------------


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

    monkeypatch.setattr(annoboot.eval, "extract_features", spy)
    cfg.probes = ["knn", "linear"]
    pooled_only = evaluate(encoder, TensorSource(60), TensorSource(30, seed=1), cfg, 16, normalize, "cpu")
    assert "map" not in pooled_only and "map" not in pooled_only["details"]
    assert kept_tokens == [False, False]  # tokens are extracted only for the MAP probe


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


# --- export --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kwargs, img_size",
    [(TINY_VIT[0], dict(TINY_VIT[1]), 32), ("resnet18", {}, 32)],
    ids=["vit", "resnet"],
)
def test_exported_backbone_reloads_in_timm_with_the_same_features(tmp_path, name, kwargs, img_size):
    torch.manual_seed(0)
    encoder = build_encoder(name, img_size, kwargs).eval()
    with torch.no_grad():  # move BatchNorm statistics off their defaults, so they must be saved
        encoder.backbone.train()
        encoder(torch.randn(8, 3, img_size, img_size))
        encoder.eval()

    path = export_backbone(encoder, tmp_path / "backbone", encoder.backbone_name, encoder.create_kwargs)
    assert path == tmp_path / "backbone.safetensors" and path.is_file()
    metadata = json.loads(metadata_path(path).read_text())
    assert metadata["backbone"] == name and metadata["create_kwargs"] == encoder.create_kwargs

    images = torch.randn(2, 3, img_size, img_size)
    snippet = load_snippet(path, name, metadata["create_kwargs"])
    assert "num_classes=0" in snippet
    namespace = {"images": images}
    exec(snippet, namespace)  # the snippet as printed to the user, run verbatim
    reloaded = namespace["model"].eval()
    assert isinstance(reloaded, torch.nn.Module)
    with torch.no_grad():
        expected = encoder(images).pooled
        torch.testing.assert_close(namespace["features"], expected)
        direct = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=0, **encoder.create_kwargs
        ).eval()
        torch.testing.assert_close(direct(images), expected)


def test_the_pixel_floor_reads_raw_pixels_and_their_patches():
    from annoboot.eval.baselines import PixelEncoder

    pixels = torch.rand(2, 3, 16, 16)
    normalize = Normalize([0.5] * 3, [0.25] * 3)
    out = PixelEncoder([0.5] * 3, [0.25] * 3, patch=8)(normalize(pixels))
    assert torch.allclose(out.pooled, pixels.flatten(1), atol=1e-6)  # the normalisation undone
    assert out.tokens.shape == (2, 4, 3 * 8 * 8)
    assert torch.allclose(out.tokens[0, 1], pixels[0, :, :8, 8:].flatten(), atol=1e-6)  # top-right block
