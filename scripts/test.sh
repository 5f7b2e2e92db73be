#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --test
# loadgroup: the tests of a module that shares one stack of servers stay on one worker
# (xdist_group), so the stack starts once.
exec python3 -m pytest -n 2 --dist loadgroup --durations=25 "$@"
