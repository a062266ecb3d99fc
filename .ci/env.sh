# Sourced by .ci/test and .ci/demo: make sure ./.venv exists with this package installed
# (editable, with the test extras). Idempotent and quick when nothing changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[mtmd] creating virtual environment in $ROOT/.venv"
  "$PY" -m venv .venv
fi
STAMP=.venv/.mtmd-installed
# Re-install when the package's dependencies or the pinned upstream versions changed since the last install.
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ .ci/constraints.txt -nt "$STAMP" ]; then
  echo "[mtmd] installing nnunetv2-mtmd and its dependencies (first time: a few minutes, ~6 GB)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  # the constraints pin the upstream versions nnunetv2_mtmd/compat.py was written against
  .venv/bin/python -m pip install --quiet -c .ci/constraints.txt -e ".[test]"
  touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
# CPU-friendly nnU-Net defaults (each can be overridden by the caller).
export nnUNet_def_n_proc="${nnUNet_def_n_proc:-2}"
export nnUNet_compile="${nnUNet_compile:-f}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
