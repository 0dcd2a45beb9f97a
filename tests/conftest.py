"""Shared fixtures: small real-data configs that train in seconds on 2 CPU cores."""

from pathlib import Path

import pytest

from annoboot.config import FASHION_MNIST_ROOT, load_config

HAVE_FMNIST = (Path(FASHION_MNIST_ROOT) / "train-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(
    not HAVE_FMNIST, reason=f"Fashion-MNIST not installed at {FASHION_MNIST_ROOT} (apt-get install dataset-fashion-mnist)"
)

# A ViT small enough for CPU tests: 16 tokens of width 192, 2 blocks. float32: bf16 on this
# CPU costs each new set of shapes about 2 s of kernel set-up, which short runs never earn back;
# the tests that train for many steps run at the default precision (bf16 where native).
TINY = [
    "train.precision=fp32",
    "model.backbone=vit_tiny_patch16_224",
    "model.backbone_kwargs={patch_size: 8, depth: 2}",
    "model.decoder_depth=1",
    "model.proj_hidden_dim=256",
    "train.device=cpu",
    "train.progress=false",
    "train.warmup_steps=5",
    "train.weight_decay=0.05",
    "train.weight_decay_end=0.05",
    "train.batch_size=64",
    "data.annotation.limit=4000",
    "eval.train.limit=4000",
    "eval.test.limit=1000",
    "eval.at_end=false",
]


TUXPAINT_ROOT = Path("/usr/share/tuxpaint/stamps")
needs_tuxpaint = pytest.mark.skipif(
    not TUXPAINT_ROOT.is_dir(), reason="Tux Paint stamps not installed (apt-get install --no-install-recommends tuxpaint-stamps-default)"
)
needs_openclipart = pytest.mark.skipif(
    not Path("/usr/share/openclipart/svg").is_dir(),
    reason="Open Clip Art not installed (apt-get install --no-install-recommends openclipart-png openclipart-svg)",
)

# A text tower small enough for CPU tests (clip, ab_clip).
TINY_TEXT = ["model.text_width=64", "model.text_depth=2", "model.text_heads=2", "model.embed_dim=64", "model.context_length=24"]


@pytest.fixture
def tiny_config(tmp_path):
    def make(*overrides: str):
        return load_config(None, TINY + [f"train.out_dir={tmp_path / 'run'}", *overrides])

    return make
