#!/usr/bin/env bash
# The GPU checklist of docs/performance.md in one command (benchmarks/device_check.py says what it
# runs): under 8 minutes on one H100/H200, results in OUT (default: $OUT, else ./device_check_out).
#
#   bash benchmarks/device_check.sh [OUT] [--smoke] [--wheels DIR] [--parts ...] [--budget S]
#
# Exit status 0 when every part succeeded, 1 otherwise.
set -u
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$(command -v python || command -v python3)}"
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m benchmarks.device_check \
  --python "$python" "$@"
