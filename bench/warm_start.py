"""What each stage of a chain pays to start, and what the warm start saves: the same stages run cold, then warm.

    python bench/warm_start.py --workdir /tmp/short --from sft --overrides recipes/tiny/ci_short.yaml

`--workdir` holds a chain finished up to the stage before `--from` (runs/tiny/... under it, as the README's command
leaves it). The stages from `--from` on run twice there, through scripts/run_pipeline.py with `--force`: first
`--cold` (each stage a new process running its printed command, as a user would type it), then warm (the libraries
imported once, each stage forked from that process; llm_recipes.warm_start). Printed: each stage's seconds both
ways, the totals and their ratio, and whether each training stage's saved weights are the same bit for bit.
"""

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
DONE = re.compile(r"^\[(\w+)\] done in (\d+)s -> (\S+)$")


def run(workdir: Path, args, cold: bool) -> tuple[dict, float, dict]:
    """One pass over the stages; their seconds, the wall time, and the weights each one saved."""
    cmd = [sys.executable, str(REPO / "scripts/run_pipeline.py"), "--config", str(REPO / args.config),
           "--from", args.start, "--force"]
    cmd += ["--overrides", str(REPO / args.overrides)] if args.overrides else []
    cmd += ["--cold"] if cold else []
    started = time.time()
    result = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    wall = time.time() - started
    if result.returncode != 0:
        sys.exit(f"{'cold' if cold else 'warm'} run failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    seconds, weights = {}, {}
    for line in result.stdout.splitlines():
        match = DONE.match(line)
        if match:
            name, secs, output = match.groups()
            seconds[name] = int(secs)
            saved = workdir / output / "model.safetensors"
            if saved.is_file():
                weights[name] = load_file(saved)
    return seconds, wall, weights


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--config", default="recipes/tiny/pipeline.yaml")
    parser.add_argument("--from", dest="start", default="sft")
    parser.add_argument("--overrides", default="recipes/tiny/ci_short.yaml")
    args = parser.parse_args()

    cold, cold_wall, cold_weights = run(args.workdir, args, cold=True)
    warm, warm_wall, warm_weights = run(args.workdir, args, cold=False)
    print("| stage | cold, s | warm, s | saved, s | weights identical |")
    print("|---|---:|---:|---:|---|")
    for name in cold:
        identical = ("yes" if same(cold_weights[name], warm_weights[name]) else "NO") if name in cold_weights else ""
        print(f"| {name} | {cold[name]} | {warm.get(name, '?')} | {cold[name] - warm.get(name, 0)} | {identical} |")
    print(f"| all {len(cold)} stages (wall, warm includes its one import) | {cold_wall:.0f} | {warm_wall:.0f} | "
          f"{cold_wall - warm_wall:.0f} | cold / warm = {cold_wall / warm_wall:.2f}× |")


if __name__ == "__main__":
    main()
