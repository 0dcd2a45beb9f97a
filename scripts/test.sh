#!/usr/bin/env bash
# The test suite (CPU, real data, a few minutes on 2 cores). Run scripts/setup.sh once before.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 -m pytest -q tests "$@"
