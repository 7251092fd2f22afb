"""What a `prepare_data` recipe says: its keys (`PrepareDataArguments`) and the settings of each nested block,
checked key by key when the recipe is parsed, so that a mistake is one clear error before anything runs.

Every block is checked with `llm_recipes.values.checked_values` against the class that will receive it: a
datatrove filter's constructor, `MinhashConfig`, `SlurmPipelineExecutor`, or one of the settings dataclasses here.
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from datatrove.executor import SlurmPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup import MinhashConfig
from datatrove.pipeline.filters import FineWebQualityFilter, GopherQualityFilter
from datatrove.pipeline.readers import HuggingFaceDatasetReader, JsonlReader, ParquetReader
from datatrove.utils.hashing import HashConfig
from datatrove.utils.text import TextNormConfig

from llm_recipes.curation.c4 import FastC4QualityFilter
from llm_recipes.curation.repetition import FastGopherRepetitionFilter
from llm_recipes.recipe import RecipeError, unknown_key_message
from llm_recipes.values import checked_values

# Quality filters a recipe can enable under `filters:`, by name; the mapping's order is the pipeline's order.
QUALITY_FILTERS = {
    "gopher_repetition": FastGopherRepetitionFilter,  # datatrove's, same decisions, n-grams counted in numpy
    "gopher_quality": GopherQualityFilter,
    "c4_quality": FastC4QualityFilter,  # datatrove's, same decisions, sentences counted up to the minimum
    "fineweb_quality": FineWebQualityFilter,
}
FORMATS = ("jsonl", "parquet", "hub")
# What a run writes under `output_dir`: the dataset, dropped documents, datatrove's logs, intermediate files.
DATA, DROPPED, LOGS, WORK = "data", "dropped", "logs", "work"
CLASSIFIER = "quality_classifier"  # the classifier's model and its held-out metrics
REPORT_FILES = ("stats.json", "summary.md")
# Keys of datatrove's executors that the stage sets itself, per stage.
EXECUTOR_KEYS_SET_HERE = ("pipeline", "tasks", "workers", "logging_dir", "depends", "skip_completed", "job_name")


@dataclass
class PrepareDataArguments:
    """The keys of a `prepare_data` recipe. Nested blocks are checked key by key when the recipe is parsed."""

    output_dir: str = field(
        default="runs/prepared",
        metadata={"help": "Where the dataset (`data/`, `.jsonl.gz` shards), `stats.json`, `summary.md` and datatrove's "
                  "logs (`logs/<stage>/`) are written. Intermediate files live in `work/` until the end."},
    )
    sources: list[dict] = field(
        default_factory=list,
        metadata={"help": "Datasets to read, each {source (its name, written to every document's metadata), path "
                  "(a local file or folder, or a Hub id), format (jsonl | parquet | hub; inferred when left out), "
                  "text_key, id_key, weight, glob_pattern, name, split, revision, streaming, documents, limit}. "
                  "Weights set each source's share of the documents read; see `Source`."},
    )
    filters: dict = field(
        default_factory=dict,
        metadata={"help": "Quality filters to run, in order: a mapping of " + ", ".join(QUALITY_FILTERS)
                  + " to the keyword arguments of the datatrove filter (thresholds; {} for its defaults)."},
    )
    exact_dedup: bool = field(
        default=True, metadata={"help": "Remove exact duplicates (datatrove's 3-stage exact dedup on the text)."}
    )
    minhash: dict | None = field(
        default_factory=dict,
        metadata={"help": "MinHash near-deduplication: datatrove's MinhashConfig keys (n_grams, num_buckets, "
                  "hashes_per_bucket, seed, norm_config: {...}, hash_config: {...}); null turns it off."},
    )
    pii: dict | None = field(
        default_factory=dict,
        metadata={"help": "PII redaction: remove_emails, remove_ips, only_remove_public_ips (default false: private "
                  "addresses too), email_replacement, ip_replacement (datatrove's PIIFormatter), remove_phones, "
                  "phone_replacement, phone_region (libphonenumber; default US); null turns it off."},
    )
    decontamination: dict | None = field(
        default=None,
        metadata={"help": "Drop documents that quote an eval set: {n_grams, min_tokens, eval_sets: [{path, fields, "
                  "name, split}]}. See `DecontaminationFilter`."},
    )
    quality_classifier: dict | None = field(
        default=None,
        metadata={"help": "Score every page with a classifier trained on a judge's labels (FineWeb-Edu's method) and "
                  "drop those under min_score: {judge: module:function, judge_kwargs, annotate, heldout_fraction, "
                  "keep_label, min_score, epoch, lr, word_ngrams, dim, bucket}. "
                  "See llm_recipes/curation/classifier.py."},
    )
    share_tokenizer: str | None = field(
        default=None,
        metadata={"help": "The tokenizer whose tokens the summary's shares of each source and domain count, before "
                  "and after filtering: a local tokenizer.json (or a folder holding one) or a Hub id. Unset: words "
                  "and punctuation marks, since the tiny chain trains its tokenizer on this stage's output."},
    )
    domain_key: str | None = field(
        default=None,
        metadata={"help": "A metadata column naming each document's domain, for per-domain shares in the summary "
                  "(a URL's host stands for it: `domain_key: url`). Every distinct value is a stat, so name a "
                  "column of few values. Unset: per-source shares only."},
    )
    skip_bad_records: bool = field(
        default=False,
        metadata={"help": "A line of a jsonl source that is not UTF-8, not JSON, or lacks its text is an error naming "
                  "the file and line, before anything runs. true: skip such lines, each on its own, and report "
                  "how many in the summary (`documents_skipped`)."},
    )
    write_dropped: bool = field(
        default=False, metadata={"help": "Also write every dropped document to `dropped/<step>/`, for inspection."}
    )
    keep_work_dir: bool = field(
        default=False, metadata={"help": "Keep `work/` (intermediate documents and dedup signatures) at the end."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the per-source samplers that mix sources by weight."})
    executor: str = field(
        default="local",
        metadata={"help": "datatrove executor: local (LocalPipelineExecutor) or slurm (SlurmPipelineExecutor, "
                  "one job array per stage, chained with depends=).", "choices": ["local", "slurm"]},
    )
    tasks: int = field(
        default=1,
        metadata={"help": "datatrove tasks of the reading, filtering and writing stages. Readers shard by file, so "
                  "more tasks than input files leave some idle."},
    )
    workers: int = field(default=-1, metadata={"help": "Tasks of a stage run at once; -1 for all of them."})
    slurm: dict = field(
        default_factory=dict,
        metadata={"help": "SlurmPipelineExecutor keys for `executor: slurm`: partition and time (required), "
                  "cpus_per_task, mem_per_cpu_gb, qos, venv_path, sbatch_args, ..."},
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "Parse the recipe, check paths and filter parameters, print every stage's steps, exit."},
    )

    def __post_init__(self):
        try:
            check_recipe(self)
        except RecipeError as e:
            # RecipeParser prefixes a ValueError raised here with the recipe's file name.
            raise ValueError(str(e)) from e


def check_recipe(args: PrepareDataArguments) -> None:
    """Check every nested block; raise `RecipeError` naming the key (and the closest valid one) on a mistake."""
    if not args.sources:
        raise RecipeError("sources: needs at least one source, e.g. sources: [{source: web, path: raw/web.jsonl}]")
    parse_sources(args.sources)
    quality_filters(args.filters)
    minhash_config(args.minhash)
    pii_settings(args.pii)
    decontamination_settings(args.decontamination)
    quality_classifier_settings(args.quality_classifier)
    if args.tasks < 1:
        raise RecipeError(f"tasks: expects a positive integer, got {args.tasks}.")
    if args.workers < 1 and args.workers != -1:
        raise RecipeError(f"workers: expects a positive integer or -1 (all tasks at once), got {args.workers}.")
    if args.executor == "slurm":
        slurm_settings(args.slurm)
    elif args.slurm:
        raise RecipeError("slurm: is only read with `executor: slurm`.")


class RecordByRecordJsonlReader(JsonlReader):
    """datatrove's JsonlReader, decoding each line on its own: a line that is not UTF-8 or not JSON is skipped alone
    (`skipped_bad_records` in the stats), where JsonlReader stops reading the file at the first bad byte. Such lines
    are refused before the run unless the recipe sets `skip_bad_records` (Plan.check_data)."""

    def read_file(self, filepath: str):
        import orjson

        with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
            for line_number, raw in enumerate(f):
                with self.track_time():
                    try:
                        document = self.get_document_from_dict(orjson.loads(raw.decode("utf-8")), filepath,
                                                               line_number)
                    except (UnicodeDecodeError, orjson.JSONDecodeError):
                        self.stat_update("skipped_bad_records")
                        continue
                if document:
                    yield document


def bad_jsonl_line(raw: bytes, text_key: str) -> str | None:
    """What is wrong with one line of a jsonl source, or None."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        return f"byte {e.start + 1} is not UTF-8 ({raw[e.start:e.start + 1]!r})"
    except json.JSONDecodeError as e:
        return f"not valid JSON ({e.msg} at column {e.colno})"
    if not isinstance(record, dict) or not isinstance(record.get(text_key), str):
        return f"no text in '{text_key}'"
    return None


@dataclass
class Source:
    """One dataset to read. `weight` sets its share of the documents read: each source is sampled (datatrove's
    SamplerFilter) at the largest rates that give those shares without repeating a document, which needs each
    source's document count: counted for local files, or given as `documents` for a Hub dataset."""

    source: str
    path: str
    format: str | None = None
    text_key: str = "text"
    id_key: str = "id"
    weight: float = 1.0
    glob_pattern: str | None = None
    name: str | None = None
    split: str = "train"
    revision: str | None = None
    streaming: bool = True
    documents: int | None = None
    limit: int = -1

    def resolved_format(self) -> str:
        """jsonl, parquet or hub: the recipe's `format`, else guessed from the path."""
        if self.format:
            return self.format
        local = Path(self.path)
        name = local.name.removesuffix(".gz").removesuffix(".zst")
        if name.endswith((".jsonl", ".json")):
            return "jsonl"
        if name.endswith(".parquet"):
            return "parquet"
        if local.is_dir():
            suffixes = {p.name.split(".", 1)[-1] for p in local.rglob("*") if p.is_file()}
            if any(s.startswith("parquet") for s in suffixes):
                return "parquet"
            if any(s.startswith(("jsonl", "json")) for s in suffixes):
                return "jsonl"
        return "hub"

    def reader(self) -> PipelineStep:
        """The datatrove reader of this source, which writes the source's name into every document's metadata."""
        common = dict(text_key=self.text_key, id_key=self.id_key, limit=self.limit, adapter=SourceAdapter(self.source))
        fmt = self.resolved_format()
        if fmt == "hub":
            options = {k: v for k, v in (("name", self.name), ("split", self.split), ("revision", self.revision)) if v}
            return HuggingFaceDatasetReader(self.path, dataset_options=options, streaming=self.streaming, **common)
        local = Path(self.path)
        if local.is_file():
            # datatrove matches a pattern without wildcards as a suffix ("*web.jsonl"); a character class makes
            # it match this file's name exactly.
            folder, pattern, recursive = str(local.parent), f"[{local.name[0]}]{_glob_escape(local.name[1:])}", False
        else:
            folder, pattern, recursive = self.path, self.glob_pattern or f"**/*.{fmt}*", True
        reader_class = RecordByRecordJsonlReader if fmt == "jsonl" else ParquetReader
        reader = reader_class(folder, glob_pattern=pattern, recursive=recursive, **common)
        reader.add_file_path = False  # a local path says nothing to whoever reads the dataset later
        return reader

    def _local_files(self) -> tuple:
        reader = self.reader()
        return reader.data_folder, reader.data_folder.list_files(recursive=reader.recursive,
                                                                 glob_pattern=reader.glob_pattern)

    def count_documents(self) -> int:
        """Documents in this source: `documents` when given, else counted (lines of jsonl, parquet row counts)."""
        if self.documents is not None:
            return self.documents
        if self.resolved_format() == "hub":
            raise RecipeError(f"sources ({self.source}): mixing by weight needs the number of documents of every "
                              "source; for a Hub dataset give it as `documents:` (the row count on its dataset card).")
        folder, files = self._local_files()
        total = 0
        for f in files:
            if self.resolved_format() == "parquet":
                with folder.open(f, "rb") as handle:
                    total += pq.ParquetFile(handle).metadata.num_rows
            else:
                with folder.open(f, "rb", compression="infer") as handle:
                    total += sum(1 for line in handle if line.strip())
        return total

    def bad_records(self) -> list[tuple[str, int, str]]:
        """(file, line number, what is wrong) of every unreadable line of a local jsonl source."""
        if self.resolved_format() != "jsonl":
            return []
        folder, files = self._local_files()
        bad = []
        for name in files:
            with folder.open(name, "rb", compression="infer") as handle:
                for number, raw in enumerate(handle, start=1):
                    problem = bad_jsonl_line(raw, self.text_key) if raw.strip() else None
                    if problem:
                        bad.append((folder.resolve_paths(name), number, problem))
        return bad

    def check_columns(self, where: str) -> None:
        """Raise `RecipeError` when a local source has no files, or its first file lacks `text_key`."""
        folder, files = self._local_files()
        if not files:
            raise RecipeError(f"{where} ({self.source}): no {self.resolved_format()} files in {self.path}.")
        if self.resolved_format() == "parquet":
            with folder.open(files[0], "rb") as handle:
                columns = pq.ParquetFile(handle).schema_arrow.names
        else:
            with folder.open(files[0], "rb", compression="infer") as handle:  # text mode would decode a whole block
                columns = list(json.loads(handle.readline().decode("utf-8", errors="replace") or "{}"))
        if self.text_key not in columns:
            raise RecipeError(f"{where} ({self.source}): {files[0]} has no column '{self.text_key}' (text_key); "
                              f"it has {', '.join(columns)}.")


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[\]])", r"[\1]", name)


class SourceAdapter:
    """A reader adapter: datatrove's default mapping (text, id, the other columns as metadata), plus the recipe's
    source name as `metadata["source"]` (replacing a `source` column, so mixing and reports go by recipe name)."""

    def __init__(self, source: str):
        self.source = source

    def __call__(self, reader, data: dict, path: str, id_in_file):
        document = reader._default_adapter(data, path, id_in_file)
        document["metadata"]["source"] = self.source
        return document


def parse_sources(value) -> list[Source]:
    if not isinstance(value, list):
        raise RecipeError(f"sources: expected a list of sources, got {value!r}.")
    sources = []
    for i, entry in enumerate(value):
        where = f"sources[{i}]"
        kwargs = checked_values(Source, entry, where)
        for key in ("source", "path"):
            if not kwargs.get(key):
                raise RecipeError(f"{where}: missing required key '{key}'.")
        source = Source(**kwargs)
        if source.format is not None and source.format not in FORMATS:
            raise RecipeError(f"{where}.format: expects one of {', '.join(FORMATS)}, got {source.format!r}.")
        if source.weight <= 0:
            raise RecipeError(f"{where}.weight: must be > 0, got {source.weight}.")
        sources.append(source)
    names = [s.source for s in sources]
    if len(set(names)) != len(names):
        raise RecipeError(f"sources: every source needs a distinct `source` name (got {names}).")
    return sources


def quality_filters(value) -> dict[str, dict]:
    """{filter name: checked constructor kwargs}, in the recipe's order."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecipeError(f"filters: expected a mapping of filter names to their parameters, got {value!r}.")
    checked = {}
    for name, params in value.items():
        if name not in QUALITY_FILTERS:
            raise RecipeError(unknown_key_message(name, QUALITY_FILTERS, "filters",
                                                  help_hint=f"The filters are: {', '.join(QUALITY_FILTERS)}."))
        checked[name] = checked_values(QUALITY_FILTERS[name], params, f"filters.{name}", skip=("exclusion_writer",))
    return checked


def minhash_config(value) -> MinhashConfig | None:
    if value is None:
        return None
    kwargs = checked_values(MinhashConfig, value, "minhash")
    if "norm_config" in kwargs:
        kwargs["norm_config"] = TextNormConfig(**checked_values(TextNormConfig, kwargs["norm_config"],
                                                                "minhash.norm_config"))
    if "hash_config" in kwargs:
        kwargs["hash_config"] = HashConfig(**checked_values(HashConfig, kwargs["hash_config"], "minhash.hash_config"))
    config = MinhashConfig(**kwargs)
    if min(config.n_grams, config.num_buckets, config.hashes_per_bucket) < 1:
        raise RecipeError("minhash: n_grams, num_buckets and hashes_per_bucket must be positive.")
    return config


@dataclass
class PIISettings:
    remove_emails: bool = True
    remove_ips: bool = True
    only_remove_public_ips: bool = False  # private and reserved addresses are personal data too
    email_replacement: str = "<EMAIL>"
    ip_replacement: str = "<IP>"
    remove_phones: bool = True
    phone_replacement: str = "<PHONE>"
    phone_region: str = "US"  # the country whose national format numbers without a +country code are read in


def pii_settings(value) -> PIISettings | None:
    return None if value is None else PIISettings(**checked_values(PIISettings, value, "pii"))


@dataclass
class EvalSet:
    """An eval set to decontaminate against: a local jsonl/parquet file or a Hub dataset (`name`, `split`)."""

    path: str
    fields: list[str] = field(default_factory=lambda: ["question"])
    name: str | None = None
    split: str = "train"

    @property
    def label(self) -> str:
        local = Path(self.path)
        base = local.name.split(".")[0] if local.suffix else self.path.replace("/", "_")
        return f"{base}_{self.name}" if self.name else base

    def is_local(self) -> bool:
        return Path(self.path).suffix in (".jsonl", ".json", ".parquet")

    def texts(self) -> list[str]:
        """Each item's `fields`, joined with spaces."""
        import datasets

        from llm_recipes.data import DatasetSource

        kwargs = DatasetSource(self.path, name=self.name, split=self.split).load_kwargs(streaming=False)
        rows = datasets.load_dataset(**kwargs)
        missing = [f for f in self.fields if f not in rows.column_names]
        if missing:
            raise RecipeError(f"decontamination: eval set {self.path} has no field '{missing[0]}' "
                              f"(it has {', '.join(rows.column_names)}).")
        return [" ".join(str(row[f]) for f in self.fields) for row in rows]


@dataclass
class DecontaminationSettings:
    eval_sets: list[EvalSet]
    n_grams: int = 13
    min_tokens: int = 5


def decontamination_settings(value) -> DecontaminationSettings | None:
    if value is None:
        return None
    kwargs = checked_values(DecontaminationSettings, value, "decontamination")
    entries = kwargs.get("eval_sets")
    if not entries or not isinstance(entries, list):
        raise RecipeError("decontamination: needs `eval_sets`, a list of {path, fields}.")
    kwargs["eval_sets"] = [EvalSet(**checked_values(EvalSet, entry, f"decontamination.eval_sets[{i}]"))
                           for i, entry in enumerate(entries)]
    settings = DecontaminationSettings(**kwargs)
    if settings.n_grams < 1 or settings.min_tokens < 1:
        raise RecipeError("decontamination: n_grams and min_tokens must be positive.")
    return settings


@dataclass
class QualityClassifierSettings:
    judge: str  # module:function(documents, **judge_kwargs) -> one label per document
    judge_kwargs: dict = field(default_factory=dict)
    annotate: int = 1000  # documents the judge labels: a seeded sample of the sources
    read_per_source: int = 100_000  # documents of each source the sample is drawn from
    heldout_fraction: float = 0.3  # of the labelled documents, kept out of training to measure the classifier
    keep_label: str = "clean"  # the label of the pages to keep
    min_score: float = 0.5  # a page is kept when the classifier gives keep_label at least this probability
    epoch: int = 25
    lr: float = 0.5
    word_ngrams: int = 2
    dim: int = 32
    # Rows the word n-grams hash into: fastText's default. The model file is bucket x dim floats (256 MB at the
    # defaults), which is written and read again however few pages there are; a small crawl needs far fewer.
    bucket: int = 2_000_000


def quality_classifier_settings(value) -> QualityClassifierSettings | None:
    if value is None:
        return None
    kwargs = checked_values(QualityClassifierSettings, value, "quality_classifier")
    if "judge" not in kwargs or ":" not in str(kwargs["judge"]):
        raise RecipeError("quality_classifier: needs `judge`, a function named module:function that labels "
                          "documents (the tiny world's: llm_recipes.tiny_world.content_farm:page_quality).")
    settings = QualityClassifierSettings(**kwargs)
    if not 0 < settings.heldout_fraction < 1 or not 0 < settings.min_score < 1 or settings.annotate < 10:
        raise RecipeError("quality_classifier: heldout_fraction and min_score must be in (0, 1), and annotate at "
                          "least 10 documents.")
    return settings


def slurm_settings(value) -> dict:
    kwargs = checked_values(SlurmPipelineExecutor, value, "slurm", skip=EXECUTOR_KEYS_SET_HERE)
    for key in ("partition", "time"):
        if key not in kwargs:
            raise RecipeError(f"slurm: missing required key '{key}' (SlurmPipelineExecutor needs it).")
    return kwargs
