"""The evaluation suite: kNN, linear, MAP and decoder probes of frozen features, for any task.

:func:`run_probes` runs the probes ``EvalConfig.probes`` names on features extracted once
(:class:`~annoboot.eval.features.Features`: pooled vectors, and tokens when a token probe is
asked for), with the settings of ``EvalConfig``. The task says what the probes predict:
single-label classification (``fitting.SINGLE_LABEL``: :func:`annoboot.eval.evaluate`) or
multi-label (``multilabel.MULTI_LABEL``: which classes a scene holds,
:func:`annoboot.eval.scenes.multilabel_probe`); everything else is shared.
"""

from __future__ import annotations

from typing import Any, Dict

import torch

from annoboot.config import EvalConfig
from annoboot.errors import AnnobootError
from annoboot.eval.decoder_probe import check_decoder_options, decoder_probe, decoder_width
from annoboot.eval.features import Features
from annoboot.eval.linear import linear_probe
from annoboot.eval.map_probe import map_probe

PROBES = ("knn", "linear", "map", "decoder")
TOKEN_PROBES = ("map", "decoder")  # the probes that read tokens (N, T, D), not the pooled vector


def check_probe_config(cfg: EvalConfig) -> None:
    """AnnobootError naming an unknown probe or a bad decoder-probe option, before any feature is extracted."""
    unknown = [name for name in cfg.probes if name not in PROBES]
    if unknown:
        raise AnnobootError(f"eval.probes holds unknown probe(s) {', '.join(unknown)}; choose from {', '.join(PROBES)}")
    check_decoder_options(cfg)


def wants_tokens(cfg: EvalConfig) -> bool:
    return any(name in cfg.probes for name in TOKEN_PROBES)


def run_probes(
    train: Features,
    test: Features,
    train_targets: torch.Tensor,
    test_targets: torch.Tensor,
    num_outputs: int,
    cfg: EvalConfig,
    task: Any,
    device: torch.device,
    progress: bool = False,
) -> Dict[str, Any]:
    """The probes of ``cfg.probes`` on extracted features, with ``task``'s targets and metric.

    Returns {probe: the task's test metric (top-1 % or macro mAP %) for each probe run,
    "details": {probe: its settings and val results}}, and, for tasks that report more than
    their metric (multi-label: F1), {extra: {probe: value}} (e.g. "f1").
    """
    metric = f"test_{task.metric}"
    results: Dict[str, Any] = {}
    details: Dict[str, Any] = {}

    def record(probe: str, outcome: Dict[str, Any], settings: Dict[str, Any]) -> None:
        results[probe] = outcome[metric]
        for key, value in outcome.items():
            if key.startswith("test_") and key != metric:
                results.setdefault(key[len("test_"):], {})[probe] = value
        details[probe] = settings if probe == "knn" else {**settings, **outcome}

    if "knn" in cfg.probes:
        outcome = task.knn(train.pooled, train_targets, test.pooled, test_targets, num_outputs, cfg.knn_k,
                           cfg.knn_temperature, device)
        record("knn", outcome, {"k": min(cfg.knn_k, len(train)), "temperature": cfg.knn_temperature})
    common = {"val_fraction": cfg.val_fraction, "seed": cfg.seed, "device": device, "progress": progress, "task": task}
    if "linear" in cfg.probes:
        outcome = linear_probe(train.pooled, train_targets, test.pooled, test_targets, num_outputs, tuple(cfg.linear_lrs),
                               cfg.linear_epochs, **common)
        record("linear", outcome, {"epochs": cfg.linear_epochs})
    if "map" in cfg.probes or "decoder" in cfg.probes:
        assert train.tokens is not None and test.tokens is not None, "token probes need features with tokens"
        tokens = {"num_tokens": train.tokens.shape[1]}
    if "map" in cfg.probes:
        outcome = map_probe(train.tokens, train_targets, test.tokens, test_targets, num_outputs, tuple(cfg.map_lrs),
                            cfg.map_epochs, **common)
        record("map", outcome, {"epochs": cfg.map_epochs, **tokens})
    if "decoder" in cfg.probes:
        outcome = decoder_probe(train.tokens, train_targets, test.tokens, test_targets, num_outputs,
                                tuple(cfg.decoder_probe_lrs), cfg.decoder_probe_epochs, cfg.decoder_probe_depth,
                                cfg.decoder_probe_queries, cfg.decoder_probe_dim, **common)
        record("decoder", outcome, {"epochs": cfg.decoder_probe_epochs, **tokens, "depth": cfg.decoder_probe_depth,
                                    "queries": cfg.decoder_probe_queries,
                                    "dim": decoder_width(cfg.decoder_probe_dim, train.tokens.shape[2])})
    results["details"] = details
    return results


__all__ = ["PROBES", "TOKEN_PROBES", "check_probe_config", "run_probes", "wants_tokens"]
