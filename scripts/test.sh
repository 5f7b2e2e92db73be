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
# (xdist_group), so the stack starts once. Four workers on two cores: most tests wait on the
# servers they started, so two workers left the cores idle (a fresh run took 892 s with four,
# 1,195 s with two, on the same loaded machine the same day); the suite is kept green at four.
exec python3 -m pytest -n 4 --dist loadgroup --durations=25 "$@"
