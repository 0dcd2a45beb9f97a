"""Specifications of the decoder probe: a small transformer decoder over frozen tokens."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import one_thread  # noqa: F401  (an autouse fixture: tiny workloads run on one thread)

from annoboot.config import EvalConfig
from annoboot.data.base import InMemoryImageSource
from annoboot.errors import AnnobootError
from annoboot.eval import evaluate, format_results_table
from annoboot.eval.decoder_probe import DecoderHead, decoder_probe
from annoboot.eval.linear import linear_probe
from annoboot.models.encoder import build_encoder
from annoboot.views import Normalize


def tokens_with_one_class_token(num: int, seed: int, num_tokens: int = 16, dim: int = 32, num_classes: int = 4):
    """Noise tokens (N, T, D), one of which, at a random position, also carries its example's
    class pattern (a shared part plus a class-specific part). The mean over the T tokens holds
    the pattern at 1/T of its strength in the noise of all T tokens."""
    generator = torch.Generator().manual_seed(seed)
    fixed = torch.Generator().manual_seed(123)  # the same patterns for train and test
    patterns = torch.randn(1, dim, generator=fixed) + torch.randn(num_classes, dim, generator=fixed)
    labels = torch.randint(0, num_classes, (num,), generator=generator)
    tokens = torch.randn(num, num_tokens, dim, generator=generator)
    position = torch.randint(0, num_tokens, (num,), generator=generator)
    tokens[torch.arange(num), position] += patterns[labels]
    return tokens.half(), labels


def test_decoder_probe_finds_the_one_class_token_that_mean_pooling_dilutes():
    train_tokens, train_y = tokens_with_one_class_token(1000, seed=0)
    test_tokens, test_y = tokens_with_one_class_token(400, seed=1)
    decoder = decoder_probe(train_tokens, train_y, test_tokens, test_y, 4, lrs=(1e-3, 3e-3), epochs=8, batch_size=64)
    mean_pooled = linear_probe(train_tokens.float().mean(1), train_y, test_tokens.float().mean(1), test_y, 4)
    assert decoder["test_acc"] > 90  # chance is 25
    assert mean_pooled["test_acc"] < 65
    assert decoder["test_acc"] > mean_pooled["test_acc"] + 25


def test_decoder_head_shapes_and_input_projection():
    head = DecoderHead(token_dim=48, num_classes=5, dim=24, depth=3, num_queries=4)
    assert head(torch.randn(2, 7, 48)).shape == (2, 5)
    assert head.project.in_features == 48 and head.project.out_features == 24
    assert len(head.layers) == 3 and head.queries.shape == (1, 4, 24)
    assert isinstance(DecoderHead(token_dim=24, num_classes=5, dim=24).project, torch.nn.Identity)


class StripeSource(InMemoryImageSource):
    """Labelled images: class c is a horizontal bright stripe at row band c, plus noise."""

    def __init__(self, num_images: int, seed: int, num_classes: int = 3, side: int = 16):
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(num_images) % num_classes
        images = torch.randint(0, 60, (num_images, 3, side, side), generator=generator)
        band = side // num_classes
        for c in range(num_classes):
            images[self.labels == c, :, c * band : (c + 1) * band] += 150
        self._images = images.to(torch.uint8)
        self.name = f"stripes/{seed}"


def tiny_encoder():
    torch.manual_seed(0)
    return build_encoder("vit_tiny_patch16_224", 16, {"patch_size": 4, "depth": 1})


def test_evaluate_runs_the_decoder_probe_alone_and_tables_it():
    cfg = EvalConfig(batch_size=32, probes=["decoder"], decoder_probe_epochs=2, decoder_probe_dim=32)
    normalize = Normalize([0.5] * 3, [0.5] * 3)
    results = evaluate(tiny_encoder(), StripeSource(90, seed=0), StripeSource(30, seed=1), cfg, 16, normalize, "cpu")
    assert 0 <= results["decoder"] <= 100
    assert not {"knn", "linear", "map"} & set(results)
    detail = results["details"]["decoder"]
    assert (detail["depth"], detail["queries"], detail["dim"], detail["num_tokens"]) == (2, 1, 32, 16)
    json.dumps(results)  # written to eval.json as is
    row = next(line for line in format_results_table(results, "tiny").splitlines() if line.startswith("decoder"))
    assert "2 layers x 32, 1 query" in row


@pytest.mark.parametrize(
    "option, value",
    [("decoder_probe_depth", 0), ("decoder_probe_queries", 0), ("decoder_probe_dim", 0), ("decoder_probe_lrs", [])],
)
def test_evaluate_names_a_decoder_option_that_cannot_work(option, value):
    cfg = EvalConfig(probes=["decoder"], **{option: value})
    normalize = Normalize([0.5] * 3, [0.5] * 3)
    with pytest.raises(AnnobootError, match=f"eval.{option}"):
        evaluate(tiny_encoder(), StripeSource(9, seed=0), StripeSource(3, seed=1), cfg, 16, normalize, "cpu")
