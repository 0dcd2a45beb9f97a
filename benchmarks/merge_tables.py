"""One table from several JSON files of a protocol (scenes.py, ablations.py, decoupled.py,
captions.py, crowded_scenes.py), e.g.
seeds run at different times: mean ± half range over all runs of each variant, and differences.

    python benchmarks/merge_tables.py abl_s0.json abl_s1.json --diff ab_simclr no_actions --diff ab_simclr gamma0.5_mean
    python benchmarks/merge_tables.py ctl_s0.json=simclr_b128 ctl_s1.json=simclr_b128

``FILE=NAME`` names every run of that file NAME (a variant run with overrides keeps its
protocol name, e.g. ``simclr``). A run (variant, seed) found in several files is taken from the
last of them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _protocol import print_table


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
    args = parser.parse_args()
    runs, titles, families = {}, [], None
    for spec in args.files:
        file_name, _, name = spec.partition("=")
        path = Path(file_name)
        data = json.loads(path.read_text())
        if families is not None and data.get("families") != families:
            raise SystemExit(f"{path}: probe families {data.get('families')} differ from the first file's {families}")
        families = data.get("families")
        overrides = f", overrides {' '.join(data['overrides'])}" if data.get("overrides") else ""
        titles.append(f"{path.name}: {data['title']} ({data['date']}, {data['device']}, budget {data['budget']}{overrides})")
        for run in data["runs"]:
            run = {**run, "variant": name or run["variant"]}
            runs[(run["variant"], run["seed"])] = run
    # The files' own probe families (the in-context protocols save theirs), else the classic ones.
    print_table("\n".join(titles), list(runs.values()), [tuple(pair) for pair in args.diff], *([families] if families else []))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
