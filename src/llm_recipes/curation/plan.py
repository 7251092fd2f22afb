"""The plan of a `prepare_data` run: the datatrove jobs a recipe describes, each an executor that `depends=` on the
one before (so a cluster runs them as a job chain), and the life of a run around them.

    filter              read and mix the sources -> quality filters -> decontamination -> work/filtered
    exact_*             ExactDedupSignature -> ExactFindDedups -> ExactDedupFilter -> work/exact
    minhash_*           MinhashDedupSignature -> Buckets -> Cluster -> Filter, then PII redaction -> work/output

`prepare_run` resumes a run of the same recipe that was cut off or clears what another left; `Plan.run` runs the
jobs; `write_report` writes the report (see `report.py`) and moves the dataset into `<output_dir>/data/`.
"""

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor, SlurmPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.typeshelper import Languages

from llm_recipes.curation.classifier import METRICS_FILE, MODEL_FILE, TrainedClassifierFilter
from llm_recipes.curation.config import (
    CLASSIFIER,
    DATA,
    DROPPED,
    LOGS,
    QUALITY_FILTERS,
    REPORT_FILES,
    WORK,
    PrepareDataArguments,
    Source,
    decontamination_settings,
    minhash_config,
    parse_sources,
    pii_settings,
    quality_classifier_settings,
    quality_filters,
    slurm_settings,
)
from llm_recipes.curation.report import (
    merged_stats,
    mixture_shares,
    run_summary,
    step_rows,
    step_times,
    summary_markdown,
)
from llm_recipes.curation.steps import (
    CountingPIIFormatter,
    DecontaminationFilter,
    MixtureCounter,
    PhoneNumberFormatter,
    SourceSampler,
    document_text,
)
from llm_recipes.curation.words import fast_word_tokenizer
from llm_recipes.recipe import RecipeError
from llm_recipes.stage import COMPLETE_MARKER, is_complete, write_json_atomic

logger = logging.getLogger("llm_recipes")


def sampling_rates(sources: list[Source]) -> list[float]:
    """Keep rates that give each source its weight's share of the documents read, keeping as many as possible:
    the source with the most documents per unit of weight is read whole, the others are subsampled."""
    if len(sources) == 1:
        return [1.0]
    per_weight = [s.weight / max(s.count_documents(), 1) for s in sources]
    return [p / max(per_weight) for p in per_weight]


@dataclass
class DatatroveJob:
    """One datatrove job of the plan (one executor): its name (its logs are `logs/<name>/`; the report lists it as a
    stage), steps, the recipe's label of each step, and how many tasks run it."""

    name: str
    steps: list
    labels: list[str]
    tasks: int


class Plan:
    """The datatrove jobs a recipe describes, built but not run."""

    def __init__(self, args: PrepareDataArguments):
        self.args = args
        self.output_dir = Path(args.output_dir)
        self.work = self.output_dir / WORK
        self.sources = parse_sources(args.sources)
        self.rates = sampling_rates(self.sources)
        self.jobs = self._build()
        self.skipped_records = 0  # unreadable source lines skipped (skip_bad_records), counted by check_data

    def _dropped_writer(self, label: str):
        if not self.args.write_dropped:
            return None
        return JsonlWriter(str(self.work / DROPPED / label), output_filename="${rank}.jsonl.gz")

    def _mixture_counter(self) -> MixtureCounter:
        return MixtureCounter(self.args.share_tokenizer, self.args.domain_key)

    def _reader(self, folder: str) -> JsonlReader:
        reader = JsonlReader(str(self.work / folder), glob_pattern="*.jsonl.gz", recursive=False)
        reader.add_file_path = False
        return reader

    def _build(self) -> list[DatatroveJob]:
        jobs, current = [self._filter_job()], "filtered"
        if self.args.exact_dedup:
            jobs += self._exact_dedup_jobs(current)
            current = "exact"
        minhash = minhash_config(self.args.minhash)
        if minhash is not None:
            jobs += self._minhash_jobs(current, minhash)
        jobs.append(self._write_job(current, minhash))
        return jobs

    def _filter_job(self) -> DatatroveJob:
        """Read and mix the sources, run the quality filters and decontamination, write `work/filtered`."""
        args = self.args
        steps, labels = [], []
        for source in self.sources:
            steps.append(source.reader())
            labels.append(f"read {source.source} ({source.resolved_format()})")
        for i, (source, rate) in enumerate(zip(self.sources, self.rates)):
            if rate < 1.0:
                steps.append(SourceSampler(source.source, rate, seed=args.seed + i))
                labels.append(f"sample {source.source} (rate {rate:.3f})")
        steps.append(self._mixture_counter())
        labels.append("mixture read")
        for name, kwargs in quality_filters(args.filters).items():
            # The same words as datatrove's own tokenizer for the language, faster (see words.py).
            kwargs = {**kwargs, "language": fast_word_tokenizer(kwargs.get("language", Languages.english))}
            steps.append(QUALITY_FILTERS[name](**kwargs, exclusion_writer=self._dropped_writer(name)))
            labels.append(name)
        classifier = quality_classifier_settings(args.quality_classifier)
        if classifier is not None:
            # After the heuristic filters, as FineWeb-Edu's classifier ran on FineWeb: it scores what they keep.
            # The model file is written before the run (`train_quality_classifier`); the filter loads it lazily.
            steps.append(TrainedClassifierFilter(
                str(self.output_dir / CLASSIFIER / MODEL_FILE), keep_labels=[(classifier.keep_label,
                                                                              classifier.min_score)],
                save_labels_in_metadata=True, newline_replacement=" ",
                exclusion_writer=self._dropped_writer("quality_classifier")))
            labels.append("quality_classifier")
        decont = decontamination_settings(args.decontamination)
        if decont is not None:
            steps.append(DecontaminationFilter(decont, exclusion_writer=self._dropped_writer("decontamination")))
            labels.append("decontamination")
        steps.append(JsonlWriter(str(self.work / "filtered"), output_filename="${rank}.jsonl.gz"))
        labels.append("write filtered")
        return DatatroveJob("filter", steps, labels, args.tasks)

    def _exact_dedup_jobs(self, current: str) -> list[DatatroveJob]:
        """datatrove's 3-stage exact dedup of `work/<current>` into `work/exact`."""
        work, tasks = self.work, self.args.tasks
        config = ExactDedupConfig(content_getter=document_text)
        return [
            DatatroveJob("exact_signatures", [self._reader(current),
                                              ExactDedupSignature(str(work / "exact_sigs"), config=config)],
                         ["read filtered", "exact signatures"], tasks),
            DatatroveJob("exact_find",
                         [ExactFindDedups(str(work / "exact_sigs"), str(work / "exact_dups"), config=config)],
                         ["find exact duplicates"], 1),
            DatatroveJob("exact_filter", [self._reader(current),
                                          ExactDedupFilter(str(work / "exact_dups"), config=config,
                                                           exclusion_writer=self._dropped_writer("exact_dedup")),
                                          JsonlWriter(str(work / "exact"), output_filename="${rank}.jsonl.gz")],
                         ["read filtered", "exact_dedup", "write deduplicated"], tasks),
        ]

    def _minhash_jobs(self, current: str, minhash: MinhashConfig) -> list[DatatroveJob]:
        """The first 3 stages of datatrove's MinHash dedup of `work/<current>`; the last one is in the write job."""
        work = self.work
        return [
            DatatroveJob("minhash_signatures", [self._reader(current),
                                                MinhashDedupSignature(str(work / "minhash_sigs"), config=minhash,
                                                                      language=fast_word_tokenizer(
                                                                          Languages.english))],
                         [f"read {current}", "minhash signatures"], self.args.tasks),
            DatatroveJob("minhash_buckets", [MinhashDedupBuckets(str(work / "minhash_sigs"),
                                                                 str(work / "minhash_buckets"), config=minhash)],
                         ["minhash buckets"], minhash.num_buckets),
            DatatroveJob("minhash_cluster", [MinhashDedupCluster(str(work / "minhash_buckets"),
                                                                 str(work / "minhash_remove"), config=minhash)],
                         ["minhash clusters"], 1),
        ]

    def _write_job(self, current: str, minhash: MinhashConfig | None) -> DatatroveJob:
        """Read `work/<current>`, drop MinHash duplicates, redact PII, write the dataset to `work/output`."""
        steps, labels = [self._reader(current)], [f"read {current}"]
        if minhash is not None:
            steps.append(MinhashDedupFilter(str(self.work / "minhash_remove"),
                                            exclusion_writer=self._dropped_writer("minhash_dedup")))
            labels.append("minhash_dedup")
        pii = pii_settings(self.args.pii)
        if pii is not None:
            if pii.remove_emails or pii.remove_ips:
                steps.append(CountingPIIFormatter(
                    remove_emails=pii.remove_emails, remove_ips=pii.remove_ips,
                    only_remove_public_ips=pii.only_remove_public_ips,
                    email_replacement=pii.email_replacement, ip_replacement=pii.ip_replacement))
                labels.append("pii (e-mails, IPs)")
            if pii.remove_phones:
                steps.append(PhoneNumberFormatter(pii.phone_replacement, pii.phone_region))
                labels.append("pii (phone numbers)")
        steps.append(self._mixture_counter())
        labels.append("mixture written")
        # Metadata (source, url, license, ...) as top-level columns, as Hub datasets have them.
        steps.append(JsonlWriter(str(self.work / "output"), output_filename="${rank}.jsonl.gz", expand_metadata=True))
        labels.append("write dataset")
        return DatatroveJob("write", steps, labels, self.args.tasks)

    def check_data(self) -> None:
        """Raise `RecipeError` for a local source or eval set that is not there or lacks its text field."""
        for i, source in enumerate(self.sources):
            if source.resolved_format() != "hub":
                if not Path(source.path).exists():
                    raise RecipeError(f"sources[{i}] ({source.source}): {source.path} not found.")
                source.check_columns(f"sources[{i}]")
                self.check_records(i, source)
        decont = decontamination_settings(self.args.decontamination)
        for i, eval_set in enumerate(decont.eval_sets if decont else []):
            if eval_set.is_local():
                if not Path(eval_set.path).is_file():
                    raise RecipeError(f"decontamination.eval_sets[{i}]: {eval_set.path} not found.")
                logger.info("Decontaminating against %s: %d items", eval_set.path, len(eval_set.texts()))

    def check_records(self, index: int, source) -> None:
        """Refuse a source with an unreadable line, naming file and line; with `skip_bad_records`, count them."""
        bad = source.bad_records()
        if bad and not self.args.skip_bad_records:
            path, line, problem = bad[0]
            more = f" ({len(bad) - 1} more such lines)" if len(bad) > 1 else ""
            raise RecipeError(f"sources[{index}] ({source.source}): {path}, line {line}: {problem}{more}. Fix the "
                              "file, or set `skip_bad_records: true` to skip such lines (they are counted in the "
                              "summary).")
        for path, line, problem in bad:
            logger.warning("Skipping %s, line %d: %s", path, line, problem)
        self.skipped_records += len(bad)

    def describe(self) -> str:
        lines = []
        for source, rate in zip(self.sources, self.rates):
            lines.append(f"source {source.source}: {source.path} ({source.resolved_format()}), weight "
                         f"{source.weight:g}, keep rate {rate:.3f}")
        for job in self.jobs:
            lines.append(f"stage {job.name} ({job.tasks} task{'s' if job.tasks > 1 else ''}):")
            lines += [f"    {label:<28} {step}" for label, step in zip(job.labels, job.steps)]
        lines.append(f"output: {self.output_dir / DATA}")
        return "\n".join(lines)

    def executors(self) -> list:
        """One datatrove executor per job, each depending on the one before."""
        executors, previous = [], None
        for job in self.jobs:
            workers = job.tasks if self.args.workers == -1 else min(self.args.workers, job.tasks)
            common = dict(tasks=job.tasks, workers=workers, depends=previous,
                          logging_dir=str(self.output_dir / LOGS / job.name))
            if self.args.executor == "slurm":
                executor = SlurmPipelineExecutor(job.steps, job_name=f"prepare_data_{job.name}",
                                                 **common, **slurm_settings(self.args.slurm))
            else:
                executor = LocalPipelineExecutor(job.steps, **common)
            executors.append(executor)
            previous = executor
        return executors

    def run(self) -> None:
        """Run every job (local), or submit them as a chain of job arrays with a last job that writes the report
        (slurm)."""
        executors = self.executors()
        if self.args.executor == "slurm":
            finish_job = SlurmPipelineExecutor([FinishStep(self)], tasks=1, depends=executors[-1],
                                               logging_dir=str(self.output_dir / LOGS / "finish"),
                                               job_name="prepare_data_finish", **slurm_settings(self.args.slurm))
            finish_job.run()
        else:
            executors[-1].run()


def recipe_fingerprint(args: PrepareDataArguments) -> dict:
    """What makes two runs the same run: every key but the ones that change how, not what, is computed."""
    keys = dataclasses.asdict(args)
    for key in ("dry_run", "workers", "slurm", "executor", "keep_work_dir"):
        keys.pop(key)
    return keys


def prepare_run(args: PrepareDataArguments) -> None:
    """Resume a run of the same recipe that was cut off (datatrove skips its completed tasks); otherwise remove
    what an earlier run left (a finished run's outputs, or a different recipe's) and start clean."""
    output_dir = Path(args.output_dir)
    run_file = output_dir / WORK / "run.json"
    fingerprint = recipe_fingerprint(args)
    try:
        previous = json.loads(run_file.read_text())
    except (OSError, ValueError):
        previous = None
    if previous is not None and previous.get("recipe") == fingerprint and not is_complete(output_dir):
        logger.info("Resuming the run in %s: datatrove skips the tasks it completed.", output_dir)
        return
    (output_dir / COMPLETE_MARKER).unlink(missing_ok=True)
    for name in (DATA, DROPPED, LOGS, WORK, CLASSIFIER):
        shutil.rmtree(output_dir / name, ignore_errors=True)
    for name in REPORT_FILES:
        (output_dir / name).unlink(missing_ok=True)
    write_json_atomic(run_file, {"recipe": fingerprint, "started": time.time()})


class FinishStep(PipelineStep):
    """The last job of a slurm run: `write_report` and mark the stage complete, as the script does after a local
    run."""

    type = "🏁 - FINISH"
    name = "report"

    def __init__(self, plan: Plan):
        super().__init__()
        self.plan = plan

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from llm_recipes.stage import mark_complete

        mark_complete(self.plan.output_dir, write_report(self.plan))
        return data


def write_report(plan: Plan, seconds: float | None = None) -> dict:
    """Merge the stats, write `stats.json` and `summary.md`, move the dataset (and dropped documents) into place,
    remove `work/`, and return the summary for `stage_complete.json`."""
    output_dir, work = plan.output_dir, plan.work
    stats = {job.name: merged_stats(output_dir, job) for job in plan.jobs}
    rows = step_rows(plan.jobs, stats)
    if seconds is None:
        seconds = time.time() - json.loads((work / "run.json").read_text())["started"]
    summary = run_summary(rows, seconds, output_dir / DATA, plan.skipped_records)
    # A rerun of a write_report that was cut off finds the dataset already moved.
    for name, source in ((DATA, work / "output"), (DROPPED, work / DROPPED)):
        if source.is_dir():
            shutil.rmtree(output_dir / name, ignore_errors=True)
            source.rename(output_dir / name)
    (output_dir / DATA).mkdir(exist_ok=True)  # every document may have been dropped
    summary["mixture_shares"] = mixture_shares(plan.jobs, stats, plan.args.share_tokenizer)
    summary["step_times"] = step_times(plan.jobs, stats)
    if (output_dir / CLASSIFIER / METRICS_FILE).is_file():
        summary["quality_classifier"] = json.loads((output_dir / CLASSIFIER / METRICS_FILE).read_text())
    write_json_atomic(output_dir / "stats.json", stats)
    (output_dir / "summary.md").write_text(summary_markdown(rows, summary))
    if not plan.args.keep_work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return summary
