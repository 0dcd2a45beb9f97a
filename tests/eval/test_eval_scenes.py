"""annoboot.eval.scenes: the box and multi-label probes of scenes."""

from __future__ import annotations

import torch
from helpers import one_thread  # noqa: F401  (an autouse fixture: tiny workloads run on one thread)

from annoboot.config import EvalConfig
from annoboot.data.fashion_mnist import FashionMNISTSource
from annoboot.data.scene_generator import SceneGeneratorOptions
from annoboot.data.scenes import SceneSource
from annoboot.eval.scenes import BoxCropSource, box_probe, multilabel_probe
from annoboot.models.encoder import build_encoder
from annoboot.views import Normalize


def test_box_and_multilabel_probes_run_on_a_tiny_random_encoder():
    pool = torch.zeros(40, 28, 28, dtype=torch.uint8)
    for label in range(10):  # class c: a bright bar at row 2c+4, so crops are separable
        pool[label::10, 2 * label + 4 : 2 * label + 7, 4:24] = 255
    cfg = SceneGeneratorOptions(num_scenes=80, canvas=48, item_size=[14, 24], clutter=2)

    class FakePool(FashionMNISTSource):
        def __init__(self, split):
            self.split, self._images, self.labels = split, pool[:, None], torch.arange(40) % 10
            self.class_names = [str(c) for c in range(10)]

    train, test = SceneSource(cfg, "train", pool=FakePool("train")), SceneSource(cfg, "test", pool=FakePool("test"))
    torch.manual_seed(0)
    encoder = build_encoder("vit_tiny_patch16_224", 16, {"patch_size": 8, "depth": 1})
    normalize = Normalize([0.5] * 3, [0.5] * 3)
    probes = EvalConfig(linear_epochs=2, map_epochs=1, linear_lrs=[1e-2], map_lrs=[1e-3], knn_k=5)

    crops = BoxCropSource(test, 16)
    assert crops.in_memory().shape == (sum(len(b) for b in test.item_boxes), 1, 16, 16)
    boxes = box_probe(encoder, train, test, probes, 16, normalize, "cpu")
    scenes = multilabel_probe(encoder, train, test, probes, 16, normalize, "cpu")
    for result in (boxes, scenes):
        for probe in ("knn", "linear", "map"):
            assert 0.0 <= result[probe] <= 100.0
    assert scenes["metric"] == "mAP" and all(0.0 <= f1 <= 100.0 for f1 in scenes["f1"].values())
