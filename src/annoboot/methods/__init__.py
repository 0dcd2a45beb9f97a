"""One small module per method, each registered by name (``@register_method``); ``build_method``
picks one by ``method.name``. Every module of this package is imported here, so a new method is
one new file (docs/adding_a_method.md)."""

import importlib
import pkgutil

from annoboot.config import Config
from annoboot.errors import AnnobootError
from annoboot.methods.ab_clip import ABCLIP
from annoboot.methods.ab_dino import ABDINO
from annoboot.methods.ab_simclr import ABSimCLR
from annoboot.methods.base import Method, StepOutput
from annoboot.methods.clip import CLIP
from annoboot.methods.dino import DINO
from annoboot.methods.registry import DEFAULT_METHOD, METHOD_REGISTRY, register_method
from annoboot.methods.simclr import SimCLR

for _module in pkgutil.iter_modules(__path__):  # methods added as files of this package
    importlib.import_module(f"{__name__}.{_module.name}")

METHODS = METHOD_REGISTRY  # name -> Method subclass


def build_method(cfg: Config) -> Method:
    try:
        cls = METHODS[cfg.method.name]
    except KeyError:
        raise AnnobootError(f"unknown method.name '{cfg.method.name}'; choose one of {', '.join(METHODS)}") from None
    method = cls(cfg)
    if cfg.method.target_network == "online" and not method.online_targets:
        supported = ", ".join(name for name, c in METHODS.items() if c.online_targets)
        raise AnnobootError(f"bad config: method.target_network=online applies to {supported}, not {cfg.method.name} "
                            "(its target network is part of the base method, or it has none)")
    _check_batch_sizes(method, cfg)
    return method


def _check_batch_sizes(method: Method, cfg: Config) -> None:
    """Refuse a batch split that cannot train, naming the options that made it."""
    sizes, m, base = method.batch_sizes(), cfg.method, cfg.train.batch_size
    if sizes["annotation"] < method.min_annotation_images:
        split = f" x method.annotation_fraction {m.annotation_fraction}" if "bootstrap" in sizes else ""
        raise AnnobootError(
            f"bad config: train.batch_size {base}{split} gives {m.name} {sizes['annotation']} annotation "
            f"image(s) per step; its loss contrasts images and needs at least {method.min_annotation_images}"
        )
    least = method.min_bootstrap_images
    if sizes.get("bootstrap", least) < least:
        rule = (f"train.batch_size x method.bootstrap_fraction = {base} x {m.bootstrap_fraction}" if m.bootstrap_fraction is not None
                else f"equal views with the base method (method.bootstrap_fraction: null) at train.batch_size {base}")
        need = "" if least == 1 else f"; {m.name} with method.bootstrap_annotations={m.bootstrap_annotations} needs at least {least}"
        raise AnnobootError(f"bad config: {rule} gives {sizes['bootstrap']} bootstrap images per step{need}; "
                            "raise train.batch_size or method.bootstrap_fraction")


__all__ = ["ABCLIP", "ABDINO", "ABSimCLR", "CLIP", "DEFAULT_METHOD", "DINO", "METHODS", "Method", "SimCLR", "StepOutput", "build_method",
           "register_method"]
