"""The probes by name (``eval.probes``), filled by :func:`register_probe` next to each probe's code.

A leaf: it imports nothing of annoboot's but its error type, so a probe module registers itself without importing
the modules that run probes (eval/probes.py imports every probe module, which fills this).

A probe is a function ``fit(train, test, train_targets, test_targets, num_outputs, cfg, common)
-> (outcome, details)``: ``train``/``test`` are :class:`annoboot.eval.features.Features`,
``cfg`` the ``EvalConfig``, ``common`` the settings every head-training probe takes (task,
val_fraction, seed, device, progress); ``outcome`` holds the task's test metric under
``test_<metric>``, ``details`` what the results table reports of the probe's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from annoboot.errors import AnnobootError


@dataclass(frozen=True)
class Probe:
    name: str
    fit: Callable[..., Any]
    reads_tokens: bool  # reads Features.tokens (N, T, D); else the pooled vectors (N, D)
    check: Optional[Callable[[Any], None]]  # check(eval_cfg): AnnobootError naming the bad eval.* key


PROBE_REGISTRY: Dict[str, Probe] = {}

# The scene probe families (eval/scene_suite.py), named here so that a config's
# eval.scene_probes is checked at load without importing the probes that run them.
SCENE_PROBE_FAMILIES = ("items", "boxes", "multilabel", "in_context", "scenes_in_context")


def register_probe(name: str, reads_tokens: bool = False, check: Optional[Callable[[Any], None]] = None):
    """Decorator: make ``fit`` the probe ``eval.probes=[..., <name>]``; ``check`` validates its
    options when a config that names it loads, before any training."""

    def register(fit: Callable[..., Any]) -> Callable[..., Any]:
        PROBE_REGISTRY[name] = Probe(name, fit, reads_tokens, check)
        return fit

    return register


def require_positive(cfg: Any, *keys: str) -> None:
    """AnnobootError naming ``eval.<key>`` unless each option is a positive number (a finite one)."""
    for key in keys:
        value = getattr(cfg, key)
        if not value > 0 or value == float("inf"):
            raise AnnobootError(f"bad config: key 'eval.{key}' must be a positive number, got {value}")


def require_learning_rates(cfg: Any, key: str) -> None:
    """AnnobootError naming ``eval.<key>`` unless it is a non-empty list of positive finite rates."""
    rates = list(getattr(cfg, key))
    if not rates or not all(0 < lr < float("inf") for lr in rates):
        raise AnnobootError(f"bad config: key 'eval.{key}' must be a non-empty list of positive learning rates, got {rates}")


__all__ = ["PROBE_REGISTRY", "Probe", "SCENE_PROBE_FAMILIES", "register_probe", "require_learning_rates", "require_positive"]
