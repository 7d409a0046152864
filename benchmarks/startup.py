"""How long `hw2 --help` takes, against a bare `python -c pass` measured in the same run.

python benchmarks/startup.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

from _common import median_time, write_result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    hw2 = shutil.which("hw2") or sys.exit("hw2 is not on PATH: pip install -e . first")
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "hw2 --help": [hw2, "--help"],
        "hw2 plugins": [hw2, "plugins"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    }
    rows = {}
    for name, cmd in cases.items():
        med, _ = median_time(lambda cmd=cmd: subprocess.run(cmd, capture_output=True, check=True), repeats=args.repeats)
        rows[name] = med
    base = rows["python -c pass"]
    for name, med in rows.items():
        print(f"{name:28s} {med * 1000:8.1f} ms   {med / base:5.1f}x python start-up")
    print("wrote", write_result("startup", {"median_seconds": rows}))


if __name__ == "__main__":
    main()
