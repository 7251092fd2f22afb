"""Prepare pretraining data with datatrove: mix sources, filter, deduplicate, decontaminate, redact PII.

    python scripts/prepare_data.py --config recipes/tiny/prepare_data.yaml
    python scripts/prepare_data.py --config recipes/tiny/prepare_data.yaml --dry_run   # print the stages, run nothing

Writes `<output_dir>/data/` (`.jsonl.gz` shards with `text`, `id`, `source`, `url`, `license`, ... that
`datasets.load_dataset` reads directly), `stats.json` (datatrove's stats of every step), `summary.md` (documents
in and out of each step, and why the dropped ones were dropped) and datatrove's logs under `logs/<stage>/`.
A run of the same recipe that was cut off resumes where datatrove left it; any other run starts clean. With
`executor: slurm` the stages are submitted as a chain of job arrays whose last job writes the report.
With `quality_classifier`, a judge labels a sample first and fastText learns the labels (quality_classifier/: the
model and its held-out precision and recall); the filter then scores every page (llm_recipes/curation/classifier.py).
"""

import llm_recipes  # noqa: F401, I001  first of all: it keeps known library start-up noise out of the log
import importlib
import threading
import time

from llm_recipes import stage
from llm_recipes.curation import Plan, PrepareDataArguments, prepare_run, write_report
from llm_recipes.curation.classifier import train_quality_classifier
from llm_recipes.curation.config import CLASSIFIER, quality_classifier_settings
from llm_recipes.recipe import RecipeParser

ARGUMENTS = (PrepareDataArguments,)


def main(argv=None):
    (args,) = RecipeParser(ARGUMENTS).parse(argv)
    stage.setup_logging()
    plan = Plan(args)
    plan.check_data()
    print(plan.describe())
    if args.dry_run:
        return

    started = time.time()
    prepare_run(args)
    classifier = quality_classifier_settings(args.quality_classifier)
    if classifier is not None:  # trained before the pipeline that runs it
        # fastText trains without holding the GIL, so spaCy, which the filters' word tokenizer loads, is imported
        # meanwhile on the other core (1.3 s of the tiny recipe's 10 s).
        spacy_import = None
        if args.filters or args.minhash:
            spacy_import = threading.Thread(target=importlib.import_module, args=("spacy",), daemon=True)
            spacy_import.start()
        train_quality_classifier(classifier, plan.sources, plan.output_dir / CLASSIFIER, args.seed)
        if spacy_import is not None:
            spacy_import.join()
    plan.run()
    if args.executor == "slurm":
        print(f"Submitted; the last job writes {args.output_dir}/summary.md and marks the stage complete.")
        return
    summary = write_report(plan, seconds=time.time() - started)
    print((plan.output_dir / "summary.md").read_text())
    stage.mark_complete(args.output_dir, summary)


if __name__ == "__main__":
    stage.run(main)
