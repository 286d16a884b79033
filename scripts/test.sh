#!/usr/bin/env bash
# The one test command: creates the environment when needed, then runs the whole test suite.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/env.sh"
cd "$here"
exec "${IMFL_VENV:-$here/.venv}/bin/python" -m pytest "$@"
