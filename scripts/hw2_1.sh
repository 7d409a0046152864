#!/usr/bin/env bash
# hw2_1.sh OUT — P1 graded contract: OUT/mnistm and OUT/svhn, 50 images per digit each
# (0_001.png … 9_050.png), fixed seed. Uses the embedded default model.
set -euo pipefail
if [ "$#" -ne 1 ]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
exec hw2 ddpm generate "$1"
