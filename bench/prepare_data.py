"""Data preparation's speed on the tiny recipe, against datatrove's own filters, in the same run.

    python bench/prepare_data.py [--repeats 3]

Each run is a fresh process of `scripts/prepare_data.py --config recipes/tiny/prepare_data.yaml` (needs
`runs/tiny/data`, from the chain's `data` stage). `ours` is the recipe as shipped; `datatrove` is the same recipe
with datatrove's GopherRepetitionFilter and C4QualityFilter and libphonenumber's plain PhoneNumberMatcher put back
(patched in before the script runs), fastText's default number of hash buckets for the classifier, and spaCy
imported when the filters first need it rather than while fastText trains. Both must write the same dataset (the
same pages, text and metadata): the table says whether they did. Wall time counts the process (imports included);
stage time is the stage's own `seconds` (classifier training and the datatrove jobs).
"""

import argparse
import gzip
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes/tiny/prepare_data.yaml"

# What `datatrove` runs: the script's main, after the faster parts are swapped for the stock ones.
STOCK = """
import importlib, sys, threading, phonenumbers
start = threading.Thread.start
def start_without_spacy_import(thread):  # the script's thread that imports spaCy while fastText trains: idle
    if thread._target is importlib.import_module and thread._args == ("spacy",):
        thread._target = lambda name: None
    start(thread)
threading.Thread.start = start_without_spacy_import
from datatrove.pipeline.filters import C4QualityFilter, GopherRepetitionFilter
from llm_recipes.curation import config, steps
config.QUALITY_FILTERS["gopher_repetition"] = GopherRepetitionFilter
config.QUALITY_FILTERS["c4_quality"] = C4QualityFilter
steps.phone_number_matcher = lambda text, region: phonenumbers.PhoneNumberMatcher(
    text, region, leniency=phonenumbers.Leniency.VALID)
sys.argv = ["prepare_data.py"] + sys.argv[1:]
import runpy
runpy.run_path("scripts/prepare_data.py", run_name="__main__")
"""


def dataset_digest(folder: Path) -> str:
    """The written pages, their text and metadata, in order; the classifier's scores aside, which move in the
    fifth decimal with its number of hash buckets (the pages it drops do not)."""
    digest = hashlib.sha256()
    for shard in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(shard, "rt") as f:
            for line in f:
                row = {key: value for key, value in json.loads(line).items() if not key.startswith("__label__")}
                digest.update(json.dumps(row, sort_keys=True).encode())
    return digest.hexdigest()[:12]


def run_once(variant: str, output_dir: Path) -> dict:
    text = RECIPE.read_text().replace("output_dir: runs/tiny/prepared", f"output_dir: {output_dir}")
    if variant == "datatrove":  # fastText's default bucket count
        text = "\n".join(line for line in text.splitlines() if not line.strip().startswith("bucket:"))
    recipe = output_dir.parent / f"{variant}.yaml"
    recipe.write_text(text)
    command = [sys.executable, "scripts/prepare_data.py"] if variant == "ours" else [sys.executable, "-c", STOCK]
    started = time.perf_counter()
    run = subprocess.run(command + ["--config", str(recipe)], cwd=REPO, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"The {variant} run failed:\n{run.stderr[-3000:]}")
    wall = time.perf_counter() - started
    summary = json.loads((output_dir / "stage_complete.json").read_text())
    return {"wall": wall, "stage": summary["seconds"], "documents_in": summary["documents_in"],
            "documents_out": summary["documents_out"], "digest": dataset_digest(output_dir / "data"),
            "steps": {f"{row['stage']}: {row['step']}": row["seconds"] for row in summary["step_times"]}}


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work_dir", default=str(REPO / "runs/bench/prepare_data"))
    args = parser.parse_args()
    if not (REPO / "runs/tiny/data/raw/web.jsonl").is_file():
        sys.exit("runs/tiny/data is missing: run `python scripts/make_tiny_data.py --config recipes/tiny/data.yaml`.")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    results = {"datatrove": [], "ours": []}
    for repeat in range(args.repeats):  # alternated, so that a slower spell of the machine hits both
        for variant in results:
            results[variant].append(run_once(variant, work / variant))
            print(f"repeat {repeat + 1} {variant}: {results[variant][-1]['stage']:.2f} s", flush=True)

    print("\n| variant | runs | wall s | stage s | documents/s (stage) | documents/s (wall) | written | dataset |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for variant, runs in results.items():
        documents = runs[0]["documents_in"]
        print(f"| {variant} | {len(runs)} | {mean_sd([r['wall'] for r in runs])} | "
              f"{mean_sd([r['stage'] for r in runs])} | {mean_sd([documents / r['stage'] for r in runs])} | "
              f"{mean_sd([documents / r['wall'] for r in runs])} | {runs[0]['documents_out']:,} | "
              f"{runs[0]['digest']} |")
    stock, ours = (statistics.mean(r["stage"] for r in results[v]) for v in ("datatrove", "ours"))
    same = len({r["digest"] for runs in results.values() for r in runs}) == 1
    print(f"\nstage speed-up {stock / ours:.2f}x; the same dataset from every run: {same}")
    print("\n| step | datatrove s | ours s |\n|---|---:|---:|")
    for step in results["ours"][0]["steps"]:
        theirs = statistics.mean(r["steps"].get(step, 0.0) for r in results["datatrove"])
        print(f"| {step} | {theirs:.2f} | {statistics.mean(r['steps'][step] for r in results['ours']):.2f} |")
    if not same:
        sys.exit("The variants wrote different datasets.")


if __name__ == "__main__":
    main()
