#!/usr/bin/env bash
# hw2_3.sh INPUT_JSON OUT SD_CKPT — P3 graded contract: OUT/<key>/<idx>/source<key>_prompt<idx>_<n>.png,
# 25 images per prompt, with the project's own learned embeddings.
set -euo pipefail
if [ "$#" -ne 3 ]; then
  echo "usage: $0 INPUT_JSON OUT_DIR SD_CKPT" >&2
  exit 2
fi
exec hw2 personalize generate "$1" "$2" --model "$3"
