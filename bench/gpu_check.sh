#!/usr/bin/env bash
# The CUDA checks in one command and one summary table (bench/gpu_check.py says what each
# measures): bash bench/gpu_check.sh [--cpu] [--out DIR]. Runs $PYTHON (default python3);
# where bmdbench is not importable yet (a bare GPU machine), installs this checkout first,
# without its dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
if ! "$python" -c "import bmdbench" 2>/dev/null; then
  "$python" -m pip install --quiet --no-deps --no-build-isolation -e .
fi
exec "$python" bench/gpu_check.py "$@"
