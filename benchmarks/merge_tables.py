"""One table from several JSON files of a protocol (scenes.py, ablations.py, decoupled.py,
captions.py, crowded_scenes.py, coco_in_context.py), e.g.
seeds run at different times: mean ± half range over all runs of each variant, and differences.

    python benchmarks/merge_tables.py abl_s0.json abl_s1.json --diff ab_simclr no_actions --diff ab_simclr gamma0.5_mean
    python benchmarks/merge_tables.py ctl_s0.json=simclr_b128 ctl_s1.json=simclr_b128
    python benchmarks/merge_tables.py items.json equal_time.json=decoupled/equal_time --json merged.json

``FILE=NAME`` names every run of that file NAME (a variant run with overrides keeps its
protocol name, e.g. ``simclr``). A run (variant, seed) found in several files is taken from the
last of them. The probe families are the ones a file saved, else those every one of its runs
holds (coco_in_context.py's files before it saved them). ``--json`` writes the merged runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _harness import read_protocol_json, write_json
from _protocol import FAMILY_TITLES, print_table


# What the probes ran on, where a file records it: files that differ in any are not one table.
PROBE_DATA = ("scene_settings", "train", "test")


def families_of(path: Path, data: dict) -> list:
    """The file's probe families: saved, or the known ones that every one of its runs holds."""
    families = data.get("families") or [family for family in FAMILY_TITLES if all(family in run for run in data["runs"])]
    if not families:
        raise SystemExit(f"{path}: no probe family ({', '.join(FAMILY_TITLES)}) is in every run; is it a protocol's --json?")
    return families


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="protocol JSON files, each optionally FILE=NAME")
    parser.add_argument(
        "--diff",
        nargs=2,
        action="append",
        default=[],
        metavar=("BASE", "OTHER"),
        help="also print OTHER - BASE per figure",
    )
    parser.add_argument("--json", help="write the merged runs (each with its variant as named here)")
    args = parser.parse_args()
    runs, titles, families, first = {}, [], None, None
    for spec in args.files:
        file_name, _, name = spec.partition("=")
        path = Path(file_name)
        data = read_protocol_json(file_name)
        if families is not None and families_of(path, data) != families:
            raise SystemExit(f"{path}: probe families {families_of(path, data)} differ from the first file's {families}")
        families, first = families_of(path, data), first or data
        for key in PROBE_DATA:
            if key in data and key in first and data[key] != first[key]:
                raise SystemExit(f"{path}: its {key} ({data[key]}) differ from the first file's ({first[key]}); "
                                 "merge only runs probed on the same data")
        overrides = f", overrides {' '.join(data['overrides'])}" if data.get("overrides") else ""
        budget = f", budget {data['budget']}" if data.get("budget") else ""
        titles.append(f"{path.name}: {data['title']} ({data['date']}, {data['device']}{budget}{overrides})")
        for run in data["runs"]:
            run = {**run, "variant": name or run["variant"]}
            runs[(run["variant"], run["seed"])] = run
    print_table("\n".join(titles), list(runs.values()), [tuple(pair) for pair in args.diff], families)
    write_json(args.json, "\n".join(titles), list(runs.values()), families=families, merged_from=list(args.files))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
