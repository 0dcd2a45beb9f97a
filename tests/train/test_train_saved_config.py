"""What a run saves of its config (config.yaml, checkpoints): its own method's options, not every
registered method's, and a config that loads back to the one it ran with; what the trainer reads
of the method section is declared by the method (an EMA target needs EMATargetOptions)."""

from pathlib import Path

import pytest
import yaml
from helpers import needs_fmnist

from annoboot.config import saved_settings
from annoboot.errors import AnnobootError
from annoboot.methods import METHODS
from annoboot.methods.simclr import SimCLR
from annoboot.recipe import config_from_saved
from annoboot.train import Trainer
from annoboot.train.checkpoint import checkpoint_path, load_checkpoint

pytestmark = needs_fmnist

# Keys by the method that declares them: each run's saved sections hold its own and none of the others'.
SIMCLR_KEYS = {"method.temperature", "model.proj_dim"}
EMA_KEYS = {"method.ema_momentum", "method.ema_momentum_end", "method.ema_horizon"}
AB_KEYS = {"method.gamma", "method.annotation_queue", "views.bootstrap_views", "model.decoder_depth"}
DINO_KEYS = {"method.teacher_temp", "views.local_views"}
CLIP_KEYS = {"model.text_width", "views.clip_scale"}


def _keys(saved):
    return {f"{section}.{key}" for section in ("model", "views", "method") for key in saved[section]}


@pytest.mark.parametrize("method, own, foreign", [
    ("simclr", SIMCLR_KEYS, EMA_KEYS | AB_KEYS | DINO_KEYS | CLIP_KEYS),
    ("ab_simclr", SIMCLR_KEYS | EMA_KEYS | AB_KEYS, DINO_KEYS | CLIP_KEYS),
    ("dino", DINO_KEYS | EMA_KEYS, SIMCLR_KEYS | AB_KEYS | CLIP_KEYS),
])
def test_a_run_saves_its_own_methods_options_and_loads_back_to_its_config(tiny_config, method, own, foreign):
    cfg = tiny_config(f"method.name={method}", "train.steps=1", "train.ckpt_every=1", "train.batch_size=16",
                      "method.annotation_fraction=0.5")
    Trainer(cfg).fit()
    written = yaml.safe_load((Path(cfg.train.out_dir) / "config.yaml").read_text())
    in_checkpoint = load_checkpoint(checkpoint_path(cfg.train.out_dir, 1))["config"]
    for saved in (written, in_checkpoint):
        keys = _keys(saved)
        assert own <= keys, own - keys
        assert not keys & foreign, keys & foreign
        assert saved["method"]["name"] == method and saved["views"]["img_size"] == cfg.views.img_size  # core keys stay
        # Loaded back, the run's own settings are the ones it ran with (an option of another
        # method that the recipe set, e.g. TINY's model.decoder_depth for SimCLR, is not saved).
        assert saved_settings(config_from_saved(saved), METHODS[method].config_options) == saved
        assert saved == saved_settings(cfg, METHODS[method].config_options)


def test_a_method_asking_for_an_ema_target_must_declare_its_options(tiny_config, monkeypatch):
    class UndeclaredTarget(SimCLR):  # asks for the target, declares SimCLR's options only
        uses_target = True

    monkeypatch.setitem(METHODS, "simclr", UndeclaredTarget)
    with pytest.raises(AnnobootError, match="EMATargetOptions"):
        Trainer(tiny_config("method.name=simclr"))
    monkeypatch.setitem(METHODS, "simclr", SimCLR)  # the declared case builds
    assert Trainer(tiny_config("method.name=simclr")).target_network is None
