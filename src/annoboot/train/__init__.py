from annoboot.train.trainer import Trainer, resolve_device

__all__ = ["Trainer", "resolve_device"]
