#!/usr/bin/env bash
# The one prepared GPU run (see benchmarks/gpu_suite.py): benchmarks/gpu_suite.sh OUTDIR [--dry-run]
# On a GPU it needs no editing: it finds the repository from its own path, installs nothing, and
# stays within --budget seconds (default 360); --dry-run checks the whole suite on a CPU.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ "$#" -lt 1 ]; then
  echo "usage: $0 OUTDIR [--dry-run] [--budget SECONDS] [--only step,step]" >&2
  exit 2
fi
cd "$here/.."
exec python "$here/gpu_suite.py" "$@"
