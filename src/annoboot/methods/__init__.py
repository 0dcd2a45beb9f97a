"""One small module per method; ``build_method`` picks one by name."""

from annoboot.config import Config
from annoboot.errors import AnnobootError
from annoboot.methods.ab_clip import ABCLIP
from annoboot.methods.ab_dino import ABDINO
from annoboot.methods.ab_simclr import ABSimCLR
from annoboot.methods.base import Method, StepOutput
from annoboot.methods.clip import CLIP
from annoboot.methods.dino import DINO
from annoboot.methods.simclr import SimCLR

METHODS = {"simclr": SimCLR, "ab_simclr": ABSimCLR, "dino": DINO, "ab_dino": ABDINO, "clip": CLIP, "ab_clip": ABCLIP}


def build_method(cfg: Config) -> Method:
    try:
        cls = METHODS[cfg.method.name]
    except KeyError:
        raise AnnobootError(f"unknown method.name '{cfg.method.name}'; choose one of {', '.join(METHODS)}") from None
    return cls(cfg)


__all__ = ["ABCLIP", "ABDINO", "ABSimCLR", "CLIP", "DINO", "METHODS", "Method", "SimCLR", "StepOutput", "build_method"]
