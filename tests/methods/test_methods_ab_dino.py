"""ABDINO: values over its own prototype embedding, training with and without bootstrapping."""

import math

import pytest
import torch
from helpers import DINO_TINY, needs_fmnist, random_images

from annoboot.methods import ABDINO, build_method
from annoboot.methods.bootstrapping import bootstrap_views
from annoboot.objectives import teacher_distribution
from annoboot.train import Trainer
from annoboot.train.ema import make_target


def test_abdino_values_cover_every_move_over_its_own_prototype_embedding(tiny_config):
    for gamma in ("0.0", "0.5"):
        cfg = tiny_config("method.name=ab_dino", f"method.gamma={gamma}", *DINO_TINY)
        method = build_method(cfg)
        assert isinstance(method, ABDINO)
        assert method.ab_prototypes.shape == (256, 64)
        # Small at the start, as DINO's own last layer: std 0.02 (trunc_normal_'s default is 1).
        assert 0.015 < method.ab_prototypes.std().item() < 0.025
        assert method.ab_prototypes.data_ptr() != method.head.last_layer.parametrizations.weight.original1.data_ptr()
        target = make_target(method)
        globals_, _ = method.multicrop_views(random_images(2))
        boot, boxes = bootstrap_views(random_images(3), cfg, method.normalize)  # 3 images x 4 views
        moves = method.value_function.moves(boxes)
        logits = method.value_function.logits(method.encoder(boot).tokens, moves, method.ab_prototypes)
        assert logits.shape == (3, 4, 4, 256)  # (N, V_source, V_target, K)
        with torch.no_grad():
            teacher_logits, targets = target.teacher_outputs(globals_, boot, moves, teacher_temp=0.04)
        assert teacher_logits.shape == (4, 256) and targets.shape == (3, 4, 256)
        assert torch.allclose(targets.sum(-1), torch.ones(3, 4))
        if gamma == "0.0":  # the reward alone: the teacher's centred, sharpened distribution
            reward = teacher_distribution(target.head(target.encoder(boot).pooled), target.center, 0.04)
            assert torch.allclose(targets, reward.view(3, 4, 256), atol=1e-5)


@needs_fmnist
@pytest.mark.parametrize("gamma", ["0.0", "0.5"])
def test_abdino_trains_with_and_without_bootstrapping_through_values(tiny_config, gamma):
    cfg = tiny_config("method.name=ab_dino", f"method.gamma={gamma}", "train.steps=2", "train.log_every=2",
                      "train.batch_size=32", *DINO_TINY)
    trainer = Trainer(cfg)
    # Half the base batch as annotations (2 global + 2 local views each = 64 views), and as many
    # bootstrap images x 4 crops as make up DINO's 32 x 4 = 128 views.
    assert trainer.method.batch_sizes() == {"annotation": 16, "bootstrap": 16}
    assert trainer.method.views_per_step() == 128
    last = trainer.fit()
    assert all(math.isfinite(v) for v in last.values()), last
    assert last["loss/bootstrap"] > 0 and last["loss/dino"] > 0
    assert any(key.startswith("ab_agreement/iou_") for key in last)
