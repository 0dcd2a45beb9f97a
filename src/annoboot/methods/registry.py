"""Methods by name (``method.name``), filled by :func:`register_method` next to each method's code.

A leaf, as timm's ``_registry.py``: registering a method imports nothing else of annoboot, so a
method module depends on the config schema below it and never on what composes it
(annoboot/recipe.py builds the schema from this registry, and rebuilds it when it changes).
"""

from __future__ import annotations

from typing import Dict

METHOD_REGISTRY: Dict[str, type] = {}  # name -> Method subclass, in registration order
DEFAULT_METHOD = "ab_simclr"  # method.name when a config names none


def register_method(name: str):
    """Class decorator: make a Method subclass the method ``method.name=<name>``; its
    ``config_options`` join the config schema (annoboot.recipe builds it from this registry)."""

    def register(cls: type) -> type:
        METHOD_REGISTRY[name] = cls
        return cls

    return register


__all__ = ["DEFAULT_METHOD", "METHOD_REGISTRY", "register_method"]
