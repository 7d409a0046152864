# Sourced by hw2_1.sh, hw2_2.sh and hw2_3.sh: sets HW2 to the command that runs hw2 here, or says
# how to install it. The graders run the scripts from anywhere, often without the venv activated:
# the venv of this checkout first (.venv beside scripts/: the hw2 these scripts came with), then
# hw2 on PATH, then a Python that has hw2 installed.
hw2_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -x "$hw2_root/.venv/bin/hw2" ]; then
  HW2=("$hw2_root/.venv/bin/hw2")
elif command -v hw2 >/dev/null 2>&1; then
  HW2=(hw2)
elif command -v python3 >/dev/null 2>&1 && (cd / && python3 -c "import hw2cli.app, hw2kernels") >/dev/null 2>&1; then
  HW2=(python3 -m hw2cli)
else
  checkout="$hw2_root"
  [ -f "$hw2_root/pyproject.toml" ] || checkout="PATH/TO/THE/HW2/CHECKOUT"
  echo "$(basename "$0"): the hw2 command is not installed; install it first with: pip install -e \"$checkout\" (see its README)." >&2
  exit 1
fi
