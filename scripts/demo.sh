#!/usr/bin/env bash
# Fresh machine to a finished IMFL run: creates the environment when needed, then runs `imfl demo`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/env.sh"
exec "${IMFL_VENV:-$here/.venv}/bin/imfl" demo "$@"
