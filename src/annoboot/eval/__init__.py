"""Probes of a frozen encoder: kNN and a linear probe on pooled features, MAP and decoder probes
on tokens.

:func:`evaluate` extracts the features of a labelled train and test source once (tokens only
when a token probe is asked for) and runs the probes named in ``EvalConfig.probes``
(:func:`annoboot.eval.probes.run_probes`, shared with the multi-label scene probes);
:func:`format_results_table` prints the outcome. Each probe is also usable on its own:
:func:`knn_accuracy`, :func:`linear_probe`, :func:`map_probe`, :func:`decoder_probe` take plain
tensors.
"""

from annoboot.eval.classification import evaluate, format_results_table
from annoboot.eval.decoder_probe import DecoderHead, decoder_probe
from annoboot.eval.features import Features, extract_features
from annoboot.eval.knn import knn_accuracy, knn_predict
from annoboot.eval.linear import linear_probe
from annoboot.eval.map_probe import MAPHead, map_probe
from annoboot.eval.probes import PROBES, TOKEN_PROBES

__all__ = [
    "DecoderHead",
    "Features",
    "MAPHead",
    "PROBES",
    "TOKEN_PROBES",
    "decoder_probe",
    "evaluate",
    "extract_features",
    "format_results_table",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "map_probe",
]
