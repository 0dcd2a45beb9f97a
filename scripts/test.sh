#!/usr/bin/env bash
# The test suite (CPU, real data, a few minutes on 2 cores). Run scripts/setup.sh once before.
set -euo pipefail
cd "$(dirname "$0")/.."
# One pytest-xdist worker per core (tests/conftest.py gives each one thread): the suite's
# process starts, imports and waits then overlap another test's compute. "-n 0" runs it serially.
exec python3 -m pytest -q -n auto --dist worksteal tests "$@"
