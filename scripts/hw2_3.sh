#!/usr/bin/env bash
# hw2_3.sh INPUT_JSON OUT SD_CKPT — P3 graded contract: OUT/<key>/<idx>/source<key>_prompt<idx>_<n>.png,
# 25 images per prompt, with the project's own learned embeddings; a token this install ships none
# for is learned first from the reference images beside INPUT_JSON (its folder/<key>; else in
# HW2_DATA_ROOT/textual_inversion, else in this checkout's hw2_data/textual_inversion), once:
# the run is kept in the weights folder, so a rerun reuses it and an interrupted one continues.
set -euo pipefail
if [ "$#" -ne 3 ]; then
  echo "usage: $0 INPUT_JSON OUT_DIR SD_CKPT" >&2
  exit 2
fi
finder="$(dirname "${BASH_SOURCE[0]}")/_hw2.sh"  # finds hw2 without an activated venv
if [ -f "$finder" ]; then source "$finder"; else HW2=(hw2); fi
exec "${HW2[@]}" personalize generate --model="$3" --train-missing -- "$1" "$2"
