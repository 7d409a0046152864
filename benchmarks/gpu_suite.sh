#!/usr/bin/env bash
# The one prepared GPU run (see benchmarks/gpu_suite.py):
#
#     benchmarks/gpu_suite.sh OUTDIR [--dry-run] [--budget 360] [--only step,step] [--bundle DIR]
#
# On a GPU it needs no editing: it finds the repository from its own path and stays within
# --budget seconds; --dry-run checks the whole suite on a CPU. Where hw2 is not installed (the lent
# GPU machine, whose image has PyTorch but not hw2's other dependencies), it installs the wheels
# of .whl/ (made here by benchmarks/gpu_wheels.sh) into a temporary folder, offline, and runs from
# the working tree: hw2cli and hw2kernels are linked to this checkout, so a fix made between two
# runs needs no new wheel. The device call, with `carry: [".whl"]`:
#
#     bash benchmarks/gpu_suite.sh /tmp/suite --bundle "$OUT"
#
# --bundle copies suite.md, suite.json, choices.json (auto's table, for kernels/choices.json) and
# one archive of every step's files into DIR (four files: the device tool brings back at most eight).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
if [ "$#" -lt 1 ]; then
  echo "usage: $0 OUTDIR [--dry-run] [--budget SECONDS] [--only step,step] [--bundle DIR]" >&2
  exit 2
fi
python="${PYTHON:-python3}"
if ! "$python" -c "import hw2cli, hw2kernels, diffusers, pydantic_settings" 2>/dev/null; then
  if ! compgen -G "$root/.whl/*.whl" >/dev/null; then
    echo "gpu_suite: hw2 is not importable by $python and $root/.whl holds no wheels;" \
      "run benchmarks/gpu_wheels.sh first (and carry .whl), or pip install -e ." >&2
    exit 2
  fi
  site="${TMPDIR:-/tmp}/hw2-gpu-site"
  rm -rf "$site"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$root"/.whl/*.whl
  # run the checkout's code, with the wheel's metadata (entry points, version) and package data
  rm -rf "$site/hw2cli" "$site/hw2kernels"
  ln -s "$root/hw2cli" "$site/hw2cli"
  ln -s "$root/kernels" "$site/hw2kernels"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH"
  echo "gpu_suite: installed $(ls "$root"/.whl/*.whl | wc -l) wheels from .whl into $site" >&2
fi
cd "$root"
exec "$python" "$here/gpu_suite.py" "$@"
