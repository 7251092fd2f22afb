"""The seeds run: a chain run again under other training seeds, and every number it measured as mean ± sd.

Training on a CPU is deterministic on one machine, but another CPU rounds differently, and hundreds of steps amplify
the difference. A seed perturbs training the same way, so the spread over seeds is the spread to expect between
machines; a number quoted, or a margin asserted, should hold across it.

    python bench/seeds.py --seeds 1 2 3 --from sft         # post-training (SFT onwards) of the tiny chain in runs/tiny
    python bench/seeds.py --seeds 1 --from pretrain        # the whole chain from another pretraining seed
    python bench/seeds.py --seeds 1 2 3 --from data --overrides recipes/tiny/ci_short.yaml   # CI's short chain
    python bench/seeds.py --seeds 1 2 3 --from sft --stages sft reward generate_preferences dpo ppo grpo \
        eval_sft eval_dpo eval_ppo eval_grpo                # the lab's post-training only

Each seed runs in its own folder, runs/seeds/<name>/seed-<N>/ under `--base`, through the same runner, scripts and
recipes; the stages before `--from` are the finished ones of `--base` (linked, not rerun), and every training stage
from `--from` on gets `seed: N`. `--stages` runs only the stages named (from `--from` on). The summary
(runs/seeds/<name>/summary.md and .json) has, for every number each stage wrote in its `stage_complete.json` and every
headline lm-eval score, its value per seed, mean and sample standard deviation.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from llm_recipes.pipeline import Pipeline  # noqa: E402
from llm_recipes.stage import COMPLETE_MARKER  # noqa: E402

# Stages whose outcome depends on a training seed (sampling included); evaluations decode greedily.
SEEDED_SCRIPTS = {"pretrain.py", "sft.py", "reward.py", "dpo.py", "ppo.py", "grpo.py", "generate_preferences.py",
                  "distill.py"}
# lm-eval metrics reported per task (the report card's headline ones).
EVAL_METRICS = ("exact_match,strict", "exact_match,first_number", "exact_match,none", "acc,none",
                "word_perplexity,none", "refusal_rate,none", "over_refusal_rate,none", "correct_call,none")


def seeded_overrides(pipeline: Pipeline, seed: int, start: str) -> dict:
    """The overrides file of one seed: the pipeline's own args (an overrides file already merged in) and `seed` on
    every seeded stage from `start` on."""
    names = [s.name for s in pipeline.stages]
    stages = {}
    for stage in pipeline.stages[names.index(start):]:
        if Path(stage.script).name in SEEDED_SCRIPTS:
            stages[stage.name] = {**stage.args, "seed": seed}
        elif stage.args:
            stages[stage.name] = dict(stage.args)
    return {"stages": stages}


def link_upstream(pipeline: Pipeline, start: str, base: Path, workdir: Path, every: bool = True) -> None:
    """Point the stages before `start` at the finished outputs in `base`, so they are skipped, not rerun. With
    `every` false (chosen stages only), unfinished ones are left out: a chosen stage that reads one fails naming it."""
    for stage in pipeline.stages[:[s.name for s in pipeline.stages].index(start)]:
        source, target = base / stage.output_dir, workdir / stage.output_dir
        if not (source / COMPLETE_MARKER).is_file():
            if not every:
                continue
            sys.exit(f"error: {source} is not a finished stage; run the chain up to '{start}' in {base} first.")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(source.resolve(), target_is_directory=True)


def measurements(pipeline: Pipeline, workdir: Path) -> dict[str, float]:
    """Every number of every stage's summary (`stage/key`) and the headline lm-eval scores (`stage/task`)."""
    found = {}
    for stage in pipeline.stages:
        folder = workdir / stage.output_dir
        results = folder / "results.json"
        if results.is_file():
            for task, metrics in json.loads(results.read_text())["results"].items():
                metric = next((m for m in EVAL_METRICS if m in metrics), None)
                if metric is not None:
                    found[f"{stage.name}/{task}"] = metrics[metric]
        elif (folder / COMPLETE_MARKER).is_file():
            for key, value in json.loads((folder / COMPLETE_MARKER).read_text()).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    found[f"{stage.name}/{key}"] = value
    return found


def summary_table(per_seed: dict[int, dict[str, float]]) -> str:
    seeds = sorted(per_seed)
    keys = list(dict.fromkeys(key for values in per_seed.values() for key in values))
    lines = ["| measurement | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |",
             "|---|" + "---:|" * (len(seeds) + 1)]
    for key in keys:
        values = [per_seed[s].get(key) for s in seeds]
        present = [v for v in values if v is not None]
        spread = statistics.stdev(present) if len(present) > 1 else 0.0
        cells = ["–" if v is None else f"{v:.4g}" for v in values]
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {statistics.fmean(present):.4g} ± {spread:.2g} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="recipes/tiny/pipeline.yaml", help="the pipeline file")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="training seeds to run")
    parser.add_argument("--from", dest="start", required=True, help="first stage run under each seed")
    parser.add_argument("--overrides", help="overrides file merged into every seed's stages (a shorter chain)")
    parser.add_argument("--base", default=".", help="folder holding the finished stages before --from")
    parser.add_argument("--stages", nargs="+", help="run only these stages (from --from on, in the pipeline's "
                        "order); default: every stage from --from on")
    parser.add_argument("--name", help="name of this sweep's folder under runs/seeds (default: from the options)")
    args = parser.parse_args(argv)

    pipeline = Pipeline.from_yaml(REPO / args.config)
    if args.overrides:
        pipeline = pipeline.with_overrides(REPO / args.overrides)
    later = [stage.name for stage in pipeline.select(start=args.start)]  # names an unknown stage before anything runs
    unknown = sorted(set(args.stages or []) - set(later))
    if unknown:
        parser.error(f"--stages: {', '.join(unknown)} not among the stages from '{args.start}' on: {', '.join(later)}")
    # One runner call for the chain from --from, or one per chosen stage (`--only`), in the pipeline's order.
    runs = [["--only", name] for name in later if name in args.stages] if args.stages else [["--from", args.start]]
    name = args.name or f"{Path(args.overrides).stem if args.overrides else 'full'}-from-{args.start}"
    root = Path(args.base).resolve() / "runs/seeds" / name  # beside the chain it branches from
    per_seed = {}
    for seed in args.seeds:
        workdir = root / f"seed-{seed}"
        workdir.mkdir(parents=True, exist_ok=True)
        link_upstream(pipeline, args.start, Path(args.base).resolve(), workdir, every=not args.stages)
        (workdir / "overrides.yaml").write_text(yaml.safe_dump(seeded_overrides(pipeline, seed, args.start),
                                                               sort_keys=False))
        print(f"[seeds] seed {seed} in {workdir}", flush=True)
        # Outputs are relative paths, so the chain runs in the seed's folder; scripts and recipes come from here.
        status = 0
        for selection in runs:
            status = status or subprocess.call([sys.executable, str(REPO / "scripts/run_pipeline.py"), "--config",
                                                str(REPO / args.config), "--overrides", "overrides.yaml", *selection],
                                               cwd=workdir)
        if status:
            print(f"[seeds] seed {seed} failed (exit status {status}); see {workdir}/{pipeline.log_dir}")
            return status
        per_seed[seed] = measurements(pipeline, workdir)
        (root / "summary.json").write_text(json.dumps(per_seed, indent=2, sort_keys=True) + "\n")
        (root / "summary.md").write_text(f"# Seeds run: {name}\n\n{summary_table(per_seed)}\n")
    print((root / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
