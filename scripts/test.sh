#!/usr/bin/env bash
# The test suite on a fresh machine: set up the environment with the test extras, then pytest.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k sampler`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh test
export JAX_PLATFORMS=cpu
# Two workers (pytest-xdist): compilation and Python run on one core each; tests that share a
# trained session fixture stay on one worker (tests/conftest.py groups them).
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup "$@"
