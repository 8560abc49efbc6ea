#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): bash scripts/gpu_check.sh [--quick] [--source PATH] ...
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" scripts/gpu_check.py "$@"
