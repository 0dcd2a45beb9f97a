"""CLIP on Tux Paint learns retrieval above chance."""

import pytest
from helpers import TINY, TINY_TEXT, needs_tuxpaint

from annoboot.config import SourceConfig
from annoboot.data import build_source
from annoboot.eval.image_text import retrieval_recall
from annoboot.recipe import load_config

CLIP_TINY = TINY + TINY_TEXT + ["data.annotation.kind=tuxpaint", "data.annotation.limit=null", "data.annotation.num_workers=0"]


@pytest.mark.slow
@needs_tuxpaint
def test_clip_on_tuxpaint_learns_retrieval_above_chance(tmp_path):
    cfg = load_config(
        None,
        CLIP_TINY
        + [
            "method.name=clip",
            f"train.out_dir={tmp_path / 'run'}",
            "train.steps=80",
            "train.log_every=10",
            "train.lr=1e-3",
            "eval.at_end=false",
        ],
    )
    from annoboot.train.trainer import Trainer

    trainer = Trainer(cfg)
    losses = []
    while trainer.step < cfg.train.steps:
        losses.append(trainer.train_step()["loss/total"].item())
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.3, losses

    from annoboot.eval.image_text import embed_images, embed_texts
    from annoboot.views import Normalize

    # Retrieval among 200 training pairs (the model has seen them; chance R@5 is 2.5%).
    source = build_source(SourceConfig(kind="tuxpaint", split="train", limit=200))
    method = trainer.method
    images, _, captions = embed_images(method, source, cfg.views.img_size, Normalize(cfg.views.mean, cfg.views.std), trainer.device)
    recall = retrieval_recall(images, embed_texts(method, captions, trainer.device))
    chance_r5 = 100 * 5 / len(captions)
    assert recall["image_to_text_r5"] > 3 * chance_r5 and recall["text_to_image_r5"] > 3 * chance_r5, recall
