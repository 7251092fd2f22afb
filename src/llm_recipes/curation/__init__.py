"""Data preparation on datatrove: the pipeline a `prepare_data` recipe describes, our few steps, and its report.

A recipe names its sources (jsonl, parquet or Hub datasets, mixed by weight), the quality filters to run with
their thresholds, exact and MinHash deduplication, PII redaction and the eval sets to decontaminate against.
Everything that datatrove does is done by datatrove: readers, `SamplerFilter`, the Gopher / C4 / FineWeb filters,
exact dedup, the 4-stage MinHash pipeline, `PIIFormatter`, writers, executors and stats. Ours are the checks that
turn a bad recipe into one clear error before anything runs, three small steps it lacks, and the report:

    config.py   the recipe's keys (`PrepareDataArguments`) and the settings of each block, checked when parsed
    steps.py    our datatrove steps: a per-source sampler, phone-number redaction, decontamination against
                local eval files
    plan.py     the datatrove jobs of a run (`Plan`, each job a `DatatroveJob`), chained with `depends=`, and the
                life of a run: `prepare_run` (resume or start clean), `Plan.run`, `write_report`
    report.py   datatrove's stats merged into `stats.json`, and `summary.md`

`write_report` leaves the dataset in `<output_dir>/data/`, a folder of `.jsonl.gz` shards that
`datasets.load_dataset` reads directly.
"""

from llm_recipes.curation.config import PrepareDataArguments
from llm_recipes.curation.plan import DatatroveJob, Plan, prepare_run, write_report

__all__ = ["DatatroveJob", "Plan", "PrepareDataArguments", "prepare_run", "write_report"]
