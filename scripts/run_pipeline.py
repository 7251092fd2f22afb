"""Run a model's whole life from one pipeline file: each stage launched as a user would, in order.

    python scripts/run_pipeline.py --config recipes/tiny/pipeline.yaml
    python scripts/run_pipeline.py --config recipes/tiny/pipeline.yaml --from pretrain
    python scripts/run_pipeline.py --config recipes/tiny/pipeline.yaml --only tokenizer --force
    python scripts/run_pipeline.py --config recipes/tiny/pipeline.yaml --overrides recipes/tiny/ci_short.yaml

Completed stages are skipped, a stage that was cut off resumes, and the first failure stops the run. The libraries
are imported once and each stage is forked from this process with the environment its command would get; `--cold`
runs each printed command as a new process instead.
"""

import llm_recipes  # noqa: F401, I001  first of all: it keeps known library start-up noise out of the log
import argparse
import sys

from llm_recipes.pipeline import Pipeline, run
from llm_recipes.recipe import RecipeError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="pipeline YAML, e.g. recipes/tiny/pipeline.yaml")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--from", dest="start", help="start at this stage and run every later one")
    group.add_argument("--only", help="run this stage alone")
    parser.add_argument("--force", action="store_true", help="delete the selected stages' outputs and run them anew")
    parser.add_argument("--overrides", help="YAML of args merged into stages (`stages: {pretrain: {max_steps: 120}}`)")
    parser.add_argument("--cold", action="store_true",
                        help="start each stage as a new process running its printed command, paying the library "
                             "imports every time, instead of forking it from this warm one (llm_recipes.warm_start)")
    args = parser.parse_args(argv)
    try:
        pipeline = Pipeline.from_yaml(args.config)
        if args.overrides:
            pipeline = pipeline.with_overrides(args.overrides)
        stages = pipeline.select(only=args.only, start=args.start)
        return run(pipeline, stages, force=args.force, warm=not args.cold)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
