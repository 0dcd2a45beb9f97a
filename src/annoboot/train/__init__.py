from annoboot.runtime import resolve_device
from annoboot.train.trainer import Trainer

__all__ = ["Trainer", "resolve_device"]
