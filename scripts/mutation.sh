#!/usr/bin/env bash
# Mutation score of the maths (issue 34): mutmut mutates objectives/, actions.py,
# methods/bootstrapping.py and models/value_decoder.py ([tool.mutmut] in pyproject.toml; the AB
# method files are not in it yet) and runs, for each mutant, the tests of those files that reach
# the mutated function. Prints
# the counts and writes the surviving mutants' diffs to mutants/survivors.txt.
#   bash scripts/mutation.sh          # about 35 min on 2 busy cores, 1,278 mutants (docs/results.md)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import mutmut" 2>/dev/null || python3 -m pip install -q "mutmut==3.8.1"
rm -rf mutants
mutmut run
mutmut results --all true > mutants/results.txt || true
: > mutants/survivors.txt
for name in $(grep -E ": survived$" mutants/results.txt | cut -d: -f1); do
    echo "### $name" >> mutants/survivors.txt
    mutmut show "$name" 2>/dev/null | grep "^[-+] " >> mutants/survivors.txt || true
done
python3 - <<'PY'
import collections, re
counts = collections.Counter(line.rsplit(": ", 1)[-1].strip() for line in open("mutants/results.txt") if ": " in line)
killed, survived = counts.get("killed", 0), counts.get("survived", 0)
print(f"mutants: {sum(counts.values())}; " + ", ".join(f"{k}: {v}" for k, v in counts.most_common()))
print(f"killed {killed} of {killed + survived} that ran: {100 * killed / max(1, killed + survived):.1f}%")
PY
python3 scripts/mutation_classify.py mutants/survivors.txt