#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --test
# Python keeps each module's compiled code beside it (__pycache__, ignored by git). An image
# that sets PYTHONDONTWRITEBYTECODE (this one does) makes every Python process of the run
# compile the tree again: pytest's workers (and their assertion rewriting), and each of the
# about 190 edgectl processes the tests start (0.3 CPU-s more for a serve).
unset PYTHONDONTWRITEBYTECODE
# loadgroup: the tests of a module that shares one stack of servers stay on one worker
# (xdist_group), so the stack starts once. Six workers on two cores: most tests wait on the
# servers they started, and with four the cores sat idle while every worker waited (fresh
# runs on one 2-core machine, one day: 520-654 s with four, 445-522 s with six, 501 s with
# eight); the suite is kept green at six.
exec python3 -m pytest -n 6 --dist loadgroup --durations=25 "$@"
