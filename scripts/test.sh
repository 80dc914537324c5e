#!/usr/bin/env bash
# The test suite on a fresh machine: set up the environment with the test extras, then pytest.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k sampler`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh test
export JAX_PLATFORMS=cpu
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
