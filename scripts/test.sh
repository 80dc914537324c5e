#!/usr/bin/env bash
# The test suite on a fresh machine: set up the environment with the test extras, then pytest.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k sampler`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh test
export JAX_PLATFORMS=cpu
# Two workers (the CI machine's two cores); tests grouped by file (tests/conftest.py).
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "${EASYALIGN_TEST_WORKERS:-2}" \
  --dist loadgroup "$@"
