#!/usr/bin/env bash
# hw2_2.sh NOISE_DIR OUT UNET — P2 graded contract: OUT/00.png … named after the noise files,
# DDIM with eta = 0 and 50 steps on the homework's face UNet.
set -euo pipefail
if [ "$#" -ne 3 ]; then
  echo "usage: $0 NOISE_DIR OUT_DIR UNET_PT" >&2
  exit 2
fi
finder="$(dirname "${BASH_SOURCE[0]}")/_hw2.sh"  # finds hw2 without an activated venv
if [ -f "$finder" ]; then source "$finder"; else HW2=(hw2); fi
exec "${HW2[@]}" ddim sample --unet="$3" -- "$1" "$2"
