#!/usr/bin/env bash
# Run the test suite the way CI does: venvs, services, then pytest.
#
#   scripts/test.sh                         lint (scripts/lint.sh), then the whole suite
#   scripts/test.sh tests/test_audit.py -x  any arguments go straight to pytest
#
# Exits with pytest's status, except that "no tests collected" (pytest's 5) is a failure
# too: a run that tested nothing must not pass.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/bootstrap.sh --with-pytes04 --with-browser

# A full run (CI's `make test`) lints first; a run of chosen tests does not.
if [ "$#" -eq 0 ]; then
  bash scripts/lint.sh
fi

# Assign first, then eval: `eval "$(cmd)"` alone would hide a failing services.sh
# (eval of empty text succeeds), while a failing assignment stops the script here.
service_env="$(bash scripts/services.sh --with-docker)"
eval "$service_env"

# Where the old-client tests find their interpreter (py-tes 0.4.x lives apart from .venv).
export FIVESAFES_PYTES04_PYTHON="$ROOT/.venv-pytes04/bin/python"

set +e
.venv/bin/pytest -q --timeout=300 "$@"
rc=$?
set -e

if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; treating that as a failure" >&2
  exit 1
fi
exit "$rc"
