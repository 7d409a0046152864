#!/usr/bin/env bash
# hw2_1.sh OUT — P1 graded contract: OUT/mnistm and OUT/svhn, 50 images per digit each
# (0_001.png … 9_050.png), fixed seed. Uses the embedded default model.
set -euo pipefail
if [ "$#" -ne 1 ]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
finder="$(dirname "${BASH_SOURCE[0]}")/_hw2.sh"  # finds hw2 without an activated venv
if [ -f "$finder" ]; then source "$finder"; else HW2=(hw2); fi
exec "${HW2[@]}" ddpm generate -- "$1"
