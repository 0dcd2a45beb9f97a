#!/usr/bin/env bash
# Mutation score of the maths (issue 34): mutmut mutates objectives/, actions.py,
# methods/bootstrapping.py, models/value_decoder.py and the AB method files ([tool.mutmut] in
# pyproject.toml) and runs, for each mutant, the tests of its selection that reach the mutated
# function. Prints the counts and writes the surviving mutants' diffs to mutants/survivors.txt.
#   bash scripts/mutation.sh          # 1,868 mutants, about 13 min on 2 idle cores (docs/results.md)
#   bash scripts/mutation.sh "annoboot.methods.ab_*"   # one part: mutmut's mutant-name patterns
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import mutmut" 2>/dev/null || python3 -m pip install -q "mutmut==3.8.1"
rm -rf mutants
# Each mutant's pytest session leaves a temporary folder (run checkpoints among them): about
# 30 GB over a whole run, which once filled the disk. They go to a folder of this run's own,
# emptied of sessions older than 5 minutes as the run goes, and removed at the end.
export TMPDIR
TMPDIR="$(mktemp -d "${TMPDIR:-/tmp}/annoboot-mutation.XXXXXX")"
( while sleep 60; do
    find "$TMPDIR" -mindepth 2 -maxdepth 2 -name 'pytest-*' -mmin +5 -exec rm -rf {} + 2>/dev/null || true
  done ) &
cleaner=$!
trap 'kill "$cleaner" 2>/dev/null; rm -rf "$TMPDIR"' EXIT
mutmut run "$@"
mutmut results --all true > mutants/results.txt || true
: > mutants/survivors.txt
for name in $(grep -E ": survived$" mutants/results.txt | cut -d: -f1); do
    echo "### $name" >> mutants/survivors.txt
    # the changed lines; a changed default argument shows as "-def ...", so no space is required
    mutmut show "$name" 2>/dev/null | grep -E "^[-+]" | grep -vE "^(---|\+\+\+)" >> mutants/survivors.txt || true
done
python3 - <<'PY'
import collections, re
counts = collections.Counter(line.rsplit(": ", 1)[-1].strip() for line in open("mutants/results.txt") if ": " in line)
killed, survived = counts.get("killed", 0), counts.get("survived", 0)
print(f"mutants: {sum(counts.values())}; " + ", ".join(f"{k}: {v}" for k, v in counts.most_common()))
print(f"killed {killed} of {killed + survived} that ran: {100 * killed / max(1, killed + survived):.1f}%")
PY
python3 scripts/mutation_classify.py mutants/survivors.txt