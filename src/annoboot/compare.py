"""Runs side by side (``annoboot compare``): what each run is, how far it trained and what its
probes reached, with only the options in which the runs differ.

A run folder holds what this reads: ``config.yaml`` (the resolved config: core keys and the run's own method options), ``metrics.jsonl``
(the last logged step, its wall time and views seen) and ``eval.json`` (the probes, written by
``annoboot pretrain`` with ``eval.at_end`` or by ``annoboot eval``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from annoboot.checked_files import is_finite_number, read_json_object, read_jsonl_rows
from annoboot.errors import AnnobootError
from annoboot.tables import format_table, format_views

# Keys of eval.json that describe a probe rather than score it.
_NOT_FIGURES = {"details", "context", "num_train", "num_test", "seconds", "checkpoint", "weights", "metric",
                "zero_shot_chance", "num_pairs", "chance_r1"}
# Options left out of the differing ones: where the run was written (differs always, says
# nothing), and what the method and data columns already show.
_NOT_OPTIONS = {"train.out_dir", "method.name", "data.annotation.kind", "data.bootstrap.kind"}


def flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
    """Nested dicts -> {"a.b.c": leaf}; lists stay leaves."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def probe_figures(results: Dict[str, Any]) -> Dict[str, float]:
    """The scores of an eval.json, named as ``annoboot eval`` prints them: "knn", "linear",
    "zero_shot", "retrieval.image_to_text_r1", and for scene families "in_context/knn"."""
    figures: Dict[str, float] = {}

    def walk(tree: Dict[str, Any], prefix: str) -> None:
        for key, value in tree.items():
            if key in _NOT_FIGURES:
                continue
            if isinstance(value, dict):
                if key == "scene_probes" and not prefix:  # its families: "in_context/knn"
                    for family, results in value.items():
                        if isinstance(results, dict):
                            walk(results, f"{family}/")
                else:
                    walk(value, f"{prefix}{key}.")
            elif is_finite_number(value):
                figures[f"{prefix}{key}"] = float(value)

    walk(results, "")
    return figures


def _mapping(value: Any) -> Dict:
    """``value`` where it is a mapping, else {} (a config section that a damaged file lacks)."""
    return value if isinstance(value, dict) else {}


def last_logged_metrics(path: Path) -> Dict[str, Any]:
    """The last readable row of metrics.jsonl (a row cut short by a kill is passed over), with
    only its numbers kept; {} without the file."""
    if not path.exists():
        return {}
    rows, _ = read_jsonl_rows(path, "the run's metrics log")
    if not rows:
        return {}
    return {key: value for key, value in rows[-1].items() if is_finite_number(value)}


def run_summary(run: str | Path) -> Dict[str, Any]:
    """One run folder -> {"run", "method", "data", "steps", "views_seen", "train_seconds",
    "figures", "evaluated", "eval_command", "hardware", "options"}; AnnobootError naming the
    folder when it is not a run. Figures a run did not log (older runs) are None."""
    folder = Path(run)
    config_path = folder / "config.yaml"
    if not folder.is_dir():
        raise AnnobootError(f"{folder}: no such run folder")
    if not config_path.is_file():
        raise AnnobootError(f"{folder}: not a run folder (no config.yaml; give the folder of an annoboot pretrain run)")
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
        raise AnnobootError(f"{config_path}: not a readable YAML config ({str(exc).splitlines()[0]})") from None
    if not isinstance(config, dict) or not isinstance(config.get("method"), dict):
        raise AnnobootError(f"{config_path}: not an annoboot config (no method section)")
    options = {key: value for key, value in flatten(config).items() if key not in _NOT_OPTIONS}
    data = _mapping(config.get("data"))
    kinds = [_mapping(data.get(part)).get("kind") for part in ("annotation", "bootstrap")]
    scenes = _mapping(_mapping(data.get("annotation")).get("scenes")).get("preset")
    described = kinds[0] or "?"
    if kinds[0] == "fmnist_scenes" and scenes:
        described += f" ({scenes})"
    if kinds[1]:
        described += f" + {kinds[1]} (bootstrap)"
    last = last_logged_metrics(folder / "metrics.jsonl")
    eval_path = folder / "eval.json"
    environment_path = folder / "environment.json"
    environment = read_json_object(environment_path, "the run's environment") if environment_path.exists() else {}
    results = read_json_object(eval_path, "the run's probe figures") if eval_path.exists() else {}
    return {
        "run": str(run),
        "method": config["method"].get("name", "?"),
        "data": described,
        "steps": last.get("step"),
        "views_seen": last.get("progress/views_seen"),
        "train_seconds": last.get("time/train_seconds"),
        "figures": probe_figures(results),
        "evaluated": eval_path.exists(),
        "eval_command": results.get("command"),
        "hardware": environment.get("hardware"),
        "options": options,
    }


def differing_options(summaries: Sequence[Dict[str, Any]]) -> List[str]:
    """The option keys whose values are not the same in every run (a key one run lacks differs)."""
    keys = dict.fromkeys(key for s in summaries for key in s["options"])
    missing = object()
    return [key for key in keys
            if len({json.dumps(s["options"].get(key, missing), default=str, sort_keys=True) for s in summaries}) > 1]


def compare_runs(runs: Sequence[str | Path]) -> Dict[str, Any]:
    """{"runs": [summary, ...], "figures": [probe names], "differing": [option keys]}."""
    if not runs:
        raise AnnobootError("compare: give at least one run folder")
    summaries = [run_summary(run) for run in runs]
    figures = list(dict.fromkeys(name for s in summaries for name in s["figures"]))
    return {"runs": summaries, "figures": figures, "differing": differing_options(summaries) if len(summaries) > 1 else []}


def _figure(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def _option(value: Any) -> str:
    """An option as a recipe would write it (0.001, [0.5, 1.0], null)."""
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)


def format_comparison(comparison: Dict[str, Any], fmt: str = "text") -> str:
    """The comparison as a table (text, md, csv) or as JSON (fmt="json")."""
    if fmt == "json":
        out = [{**{k: v for k, v in s.items() if k != "options"},
                "options": {key: s["options"].get(key) for key in comparison["differing"]}} for s in comparison["runs"]]
        return json.dumps({"runs": out, "differing": comparison["differing"]}, indent=2, default=str)
    header = ["run", "method", "data", "steps", "views", "min", *comparison["figures"], *comparison["differing"]]
    rows = []
    for s in comparison["runs"]:
        minutes = None if s["train_seconds"] is None else f"{s['train_seconds'] / 60:.1f}"
        figures = [_figure(s["figures"].get(name)) for name in comparison["figures"]]
        options = ["-" if key not in s["options"] else _option(s["options"][key]) for key in comparison["differing"]]
        rows.append([s["run"], s["method"], s["data"], "-" if s["steps"] is None else str(s["steps"]),
                     "-" if s["views_seen"] is None else format_views(s["views_seen"]), minutes or "-", *figures, *options])
    table = format_table(header, rows, fmt)
    unprobed = [s["run"] for s in comparison["runs"] if not s["evaluated"]]
    if fmt == "text" and unprobed:
        table += "\n" + "; ".join(f"{run}: no eval.json (probe it with: annoboot eval {run})" for run in unprobed)
    return table


__all__ = ["compare_runs", "differing_options", "flatten", "format_comparison", "probe_figures", "run_summary"]
