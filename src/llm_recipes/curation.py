"""Data preparation on datatrove: the pipeline a `prepare_data` recipe describes, our few steps, and its report.

A recipe names its sources (jsonl, parquet or Hub datasets, mixed by weight), the quality filters to run with
their thresholds, exact and MinHash deduplication, PII redaction and the eval sets to decontaminate against.
Everything that datatrove does is done by datatrove: readers, `SamplerFilter`, the Gopher / C4 / FineWeb filters,
exact dedup, the 4-stage MinHash pipeline, `PIIFormatter`, writers, executors and stats. Ours are three small
steps it lacks (a per-source sampler, phone-number redaction, decontamination against local eval files), the
checks that turn a bad recipe into one clear error before anything runs, and the report.

Stages, each a datatrove executor that `depends=` on the one before (so a cluster runs them as a job chain):

    filter              read and mix the sources -> quality filters -> decontamination -> work/filtered
    exact_*             ExactDedupSignature -> ExactFindDedups -> ExactDedupFilter -> work/exact
    minhash_*           MinhashDedupSignature -> Buckets -> Cluster -> Filter, then PII redaction -> work/output

`finish` then merges datatrove's per-task stats into `stats.json`, writes `summary.md`, and moves the dataset
into `<output_dir>/data/` (a folder of `.jsonl.gz` shards that `datasets.load_dataset` reads directly).
"""

import dataclasses
import inspect
import json
import logging
import re
import shutil
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from datatrove.data import Document
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
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    SamplerFilter,
)
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.formatters.pii import PIIReplacer
from datatrove.pipeline.readers import HuggingFaceDatasetReader, JsonlReader, ParquetReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.stats import PipelineStats
from datatrove.utils.text import TextNormConfig

from llm_recipes.recipe import RecipeError, unknown_key_message
from llm_recipes.stage import COMPLETE_MARKER, is_complete, write_json_atomic

logger = logging.getLogger("llm_recipes")

# Quality filters a recipe can enable under `filters:`, by name; the mapping's order is the pipeline's order.
QUALITY_FILTERS = {
    "gopher_repetition": GopherRepetitionFilter,
    "gopher_quality": GopherQualityFilter,
    "c4_quality": C4QualityFilter,
    "fineweb_quality": FineWebQualityFilter,
}
FORMATS = ("jsonl", "parquet", "hub")
DATA, DROPPED, LOGS, WORK = "data", "dropped", "logs", "work"
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
        metadata={"help": "PII redaction: remove_emails, remove_ips, only_remove_public_ips, email_replacement, "
                  "ip_replacement (datatrove's PIIFormatter), remove_phones, phone_replacement; null turns it off."},
    )
    decontamination: dict | None = field(
        default=None,
        metadata={"help": "Drop documents that quote an eval set: {n_grams, min_tokens, eval_sets: [{path, fields, "
                  "name, split}]}. See `DecontaminationFilter`."},
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
    if args.tasks < 1:
        raise RecipeError(f"tasks: expects a positive integer, got {args.tasks}.")
    if args.workers < 1 and args.workers != -1:
        raise RecipeError(f"workers: expects a positive integer or -1 (all tasks at once), got {args.workers}.")
    if args.executor == "slurm":
        slurm_settings(args.slurm)
    elif args.slurm:
        raise RecipeError("slurm: is only read with `executor: slurm`.")


def checked_kwargs(target, value: Any, where: str, skip: tuple[str, ...] = ()) -> dict:
    """`value` as keyword arguments of `target` (a class, function or dataclass): every key must be one of its
    parameters, numbers and booleans must have the type its annotation says, and YAML lists become tuples where
    the parameter expects a tuple (datatrove calls `str.endswith` on some)."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: expected a mapping of keyword arguments, got {value!r}.")
    parameters = {name: p for name, p in inspect.signature(target).parameters.items()
                  if name not in skip and name != "self" and p.kind is not p.VAR_KEYWORD}
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except (NameError, TypeError):  # an annotation that cannot be resolved: check keys only
        hints = {}
    kwargs = {}
    for key, item in value.items():
        if key not in parameters:
            raise RecipeError(unknown_key_message(key, parameters, where,
                                                  help_hint=f"Valid keys: {', '.join(parameters)}."))
        kwargs[key] = _checked_value(item, hints.get(key), f"{where}.{key}")
    return kwargs


def _annotation_types(annotation) -> set:
    if annotation is None:
        return set()
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return set().union(*(_annotation_types(a) for a in typing.get_args(annotation)))
    return {typing.get_origin(annotation) or annotation}


def _checked_value(value, annotation, where: str):
    if typing.get_origin(annotation) is typing.Literal:
        if value not in typing.get_args(annotation):
            choices = ", ".join(map(repr, typing.get_args(annotation)))
            raise RecipeError(f"{where}: expects one of {choices}, got {value!r}.")
        return value
    allowed = _annotation_types(annotation)
    if isinstance(value, list) and tuple in allowed:
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if not allowed or not allowed <= {int, float, bool, type(None)}:
        return value  # strings, mappings and unannotated parameters are passed on as written
    if value is None:
        if type(None) not in allowed:
            raise RecipeError(f"{where}: may not be null.")
        return value
    if bool in allowed:
        fits, expected = isinstance(value, bool), "true or false"
    elif float in allowed:
        fits, expected = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    else:
        fits, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    if not fits:
        raise RecipeError(f"{where}: expects {expected}, got {value!r}.")
    return value


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
        reader_class = JsonlReader if fmt == "jsonl" else ParquetReader
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

    def check_columns(self, where: str) -> None:
        """Raise `RecipeError` when a local source has no files, or its first file lacks `text_key`."""
        folder, files = self._local_files()
        if not files:
            raise RecipeError(f"{where} ({self.source}): no {self.resolved_format()} files in {self.path}.")
        if self.resolved_format() == "parquet":
            with folder.open(files[0], "rb") as handle:
                columns = pq.ParquetFile(handle).schema_arrow.names
        else:
            with folder.open(files[0], "rt", compression="infer") as handle:
                columns = list(json.loads(handle.readline() or "{}"))
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
        kwargs = checked_kwargs(Source, entry, where)
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


def sampling_rates(sources: list[Source]) -> list[float]:
    """Keep rates that give each source its weight's share of the documents read, keeping as many as possible:
    the source with the most documents per unit of weight is read whole, the others are subsampled."""
    if len(sources) == 1:
        return [1.0]
    per_weight = [s.weight / max(s.count_documents(), 1) for s in sources]
    return [p / max(per_weight) for p in per_weight]


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
        checked[name] = checked_kwargs(QUALITY_FILTERS[name], params, f"filters.{name}", skip=("exclusion_writer",))
    return checked


def minhash_config(value) -> MinhashConfig | None:
    if value is None:
        return None
    kwargs = checked_kwargs(MinhashConfig, value, "minhash")
    if "norm_config" in kwargs:
        kwargs["norm_config"] = TextNormConfig(**checked_kwargs(TextNormConfig, kwargs["norm_config"],
                                                                "minhash.norm_config"))
    if "hash_config" in kwargs:
        kwargs["hash_config"] = HashConfig(**checked_kwargs(HashConfig, kwargs["hash_config"], "minhash.hash_config"))
    config = MinhashConfig(**kwargs)
    if min(config.n_grams, config.num_buckets, config.hashes_per_bucket) < 1:
        raise RecipeError("minhash: n_grams, num_buckets and hashes_per_bucket must be positive.")
    return config


@dataclass
class PIISettings:
    remove_emails: bool = True
    remove_ips: bool = True
    only_remove_public_ips: bool = True
    email_replacement: str = "<EMAIL>"
    ip_replacement: str = "<IP>"
    remove_phones: bool = True
    phone_replacement: str = "<PHONE>"


def pii_settings(value) -> PIISettings | None:
    return None if value is None else PIISettings(**checked_kwargs(PIISettings, value, "pii"))


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
    kwargs = checked_kwargs(DecontaminationSettings, value, "decontamination")
    entries = kwargs.get("eval_sets")
    if not entries or not isinstance(entries, list):
        raise RecipeError("decontamination: needs `eval_sets`, a list of {path, fields}.")
    kwargs["eval_sets"] = [EvalSet(**checked_kwargs(EvalSet, entry, f"decontamination.eval_sets[{i}]"))
                           for i, entry in enumerate(entries)]
    settings = DecontaminationSettings(**kwargs)
    if settings.n_grams < 1 or settings.min_tokens < 1:
        raise RecipeError("decontamination: n_grams and min_tokens must be positive.")
    return settings


def slurm_settings(value) -> dict:
    kwargs = checked_kwargs(SlurmPipelineExecutor, value, "slurm", skip=EXECUTOR_KEYS_SET_HERE)
    for key in ("partition", "time"):
        if key not in kwargs:
            raise RecipeError(f"slurm: missing required key '{key}' (SlurmPipelineExecutor needs it).")
    return kwargs


class SourceSampler(SamplerFilter):
    """datatrove's SamplerFilter for one source's documents: keeps `rate` of them and passes other sources'."""

    name = "🎲 Sampler"

    def __init__(self, source: str, rate: float, seed: int, exclusion_writer=None):
        super().__init__(rate=rate, seed=seed, exclusion_writer=exclusion_writer)
        self.source = source

    def filter(self, doc: Document) -> bool:
        return doc.metadata.get("source") != self.source or super().filter(doc)


class CountingPIIFormatter(PIIFormatter):
    """datatrove's PIIFormatter (e-mails, public IPs), counting the documents it changed for the report."""

    def format(self, text: str) -> str:
        redacted = super().format(text)
        if redacted != text:
            self.stat_update("documents_redacted")
        return redacted


# North American numbers with or without a country code and in the common separators: "+1 415-555-0199",
# "(212) 555-0134", "415.555.0199". The separators are required, so sums and ids of bare digits are left alone.
PHONE_NUMBER = r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)|\d{3})[ .-]?\d{3}[ .-]\d{4}(?!\w)"


class PhoneNumberFormatter(BaseFormatter):
    """Replaces phone numbers with a placeholder (datatrove's PIIFormatter does e-mails and IPs, not phones)."""

    name = "📞 Phone numbers"

    def __init__(self, replacement: str = "<PHONE>"):
        super().__init__()
        self.replacer = PIIReplacer(PHONE_NUMBER, replacement)

    def format(self, text: str) -> str:
        redacted = self.replacer.replace(text)
        if redacted != text:
            self.stat_update("documents_redacted")
        return redacted


# Words and numbers, lowercased, with arithmetic operators kept as tokens so that "47 + 35" and "47 - 35" differ;
# other punctuation is dropped, so "What is 47 + 35?" matches however a page punctuates it.
EVAL_TOKEN = re.compile(r"\w+|[+\-*/=×÷]")


def eval_tokens(text: str) -> list[str]:
    return EVAL_TOKEN.findall(text.lower())


class DecontaminationFilter(BaseFilter):
    """Drops documents that share an n-gram with an eval item (the item's `fields` joined): any `n_grams` tokens
    in a row, or the whole item when it is shorter than that, so that short questions ("What is 47 + 35?") are
    caught too. Items shorter than `min_tokens` are too generic to be evidence and are skipped.

    datatrove's NGramsDecontFilter reads its index from lighteval tasks and matches only full n-grams; this one
    reads local (or Hub) eval files and loads them once per task, on the first document."""

    type = "🦠 - DECONT"
    name = "🧪 Eval n-grams"

    def __init__(self, settings: DecontaminationSettings, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.settings = settings
        self._starts = None  # first token -> {length: {n-gram: eval set label}}

    def _load(self):
        self._starts = {}
        for eval_set in self.settings.eval_sets:
            for text in eval_set.texts():
                tokens = eval_tokens(text)
                if len(tokens) < self.settings.min_tokens:
                    continue
                length = min(self.settings.n_grams, len(tokens))
                for i in range(len(tokens) - length + 1):
                    gram = tokens[i:i + length]
                    self._starts.setdefault(gram[0], {}).setdefault(length, {})[" ".join(gram)] = eval_set.label

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._starts is None:
            self._load()
        tokens = eval_tokens(doc.text)
        for i, token in enumerate(tokens):
            for length, grams in self._starts.get(token, {}).items():
                label = grams.get(" ".join(tokens[i:i + length]))
                if label is not None:
                    doc.metadata["contaminated_with"] = label
                    return False, f"contaminated_{label}"
        return True


def document_text(doc: Document) -> str:
    """What exact deduplication hashes (the return annotation tells datatrove to hash a str)."""
    return doc.text


@dataclass
class Stage:
    """One datatrove executor: its name (its logs are `logs/<name>/`), steps, the recipe's label of each step, and
    how many tasks run it."""

    name: str
    steps: list
    labels: list[str]
    tasks: int


class Plan:
    """The stages a recipe describes, built but not run."""

    def __init__(self, args: PrepareDataArguments):
        self.args = args
        self.output_dir = Path(args.output_dir)
        self.work = self.output_dir / WORK
        self.sources = parse_sources(args.sources)
        self.rates = sampling_rates(self.sources)
        self.stages = self._build()

    def _dropped_writer(self, label: str):
        if not self.args.write_dropped:
            return None
        return JsonlWriter(str(self.work / DROPPED / label), output_filename="${rank}.jsonl.gz")

    def _reader(self, folder: str) -> JsonlReader:
        reader = JsonlReader(str(self.work / folder), glob_pattern="*.jsonl.gz", recursive=False)
        reader.add_file_path = False
        return reader

    def _build(self) -> list[Stage]:
        args, work, tasks = self.args, self.work, self.args.tasks
        steps, labels = [], []
        for source in self.sources:
            steps.append(source.reader())
            labels.append(f"read {source.source} ({source.resolved_format()})")
        for i, (source, rate) in enumerate(zip(self.sources, self.rates)):
            if rate < 1.0:
                steps.append(SourceSampler(source.source, rate, seed=args.seed + i))
                labels.append(f"sample {source.source} (rate {rate:.3f})")
        for name, kwargs in quality_filters(args.filters).items():
            steps.append(QUALITY_FILTERS[name](**kwargs, exclusion_writer=self._dropped_writer(name)))
            labels.append(name)
        decont = decontamination_settings(args.decontamination)
        if decont is not None:
            steps.append(DecontaminationFilter(decont, exclusion_writer=self._dropped_writer("decontamination")))
            labels.append("decontamination")
        steps.append(JsonlWriter(str(work / "filtered"), output_filename="${rank}.jsonl.gz"))
        labels.append("write filtered")
        stages = [Stage("filter", steps, labels, tasks)]
        current = "filtered"

        if args.exact_dedup:
            config = ExactDedupConfig(content_getter=document_text)
            stages += [
                Stage("exact_signatures", [self._reader(current),
                                           ExactDedupSignature(str(work / "exact_sigs"), config=config)],
                      ["read filtered", "exact signatures"], tasks),
                Stage("exact_find",
                      [ExactFindDedups(str(work / "exact_sigs"), str(work / "exact_dups"), config=config)],
                      ["find exact duplicates"], 1),
                Stage("exact_filter", [self._reader(current),
                                       ExactDedupFilter(str(work / "exact_dups"), config=config,
                                                        exclusion_writer=self._dropped_writer("exact_dedup")),
                                       JsonlWriter(str(work / "exact"), output_filename="${rank}.jsonl.gz")],
                      ["read filtered", "exact_dedup", "write deduplicated"], tasks),
            ]
            current = "exact"

        final_steps, final_labels = [self._reader(current)], [f"read {current}"]
        minhash = minhash_config(args.minhash)
        if minhash is not None:
            stages += [
                Stage("minhash_signatures", [self._reader(current),
                                             MinhashDedupSignature(str(work / "minhash_sigs"), config=minhash)],
                      [f"read {current}", "minhash signatures"], tasks),
                Stage("minhash_buckets", [MinhashDedupBuckets(str(work / "minhash_sigs"),
                                                              str(work / "minhash_buckets"), config=minhash)],
                      ["minhash buckets"], minhash.num_buckets),
                Stage("minhash_cluster", [MinhashDedupCluster(str(work / "minhash_buckets"),
                                                              str(work / "minhash_remove"), config=minhash)],
                      ["minhash clusters"], 1),
            ]
            final_steps.append(MinhashDedupFilter(str(work / "minhash_remove"),
                                                  exclusion_writer=self._dropped_writer("minhash_dedup")))
            final_labels.append("minhash_dedup")
        pii = pii_settings(args.pii)
        if pii is not None:
            if pii.remove_emails or pii.remove_ips:
                final_steps.append(CountingPIIFormatter(
                    remove_emails=pii.remove_emails, remove_ips=pii.remove_ips,
                    only_remove_public_ips=pii.only_remove_public_ips,
                    email_replacement=pii.email_replacement, ip_replacement=pii.ip_replacement))
                final_labels.append("pii (e-mails, IPs)")
            if pii.remove_phones:
                final_steps.append(PhoneNumberFormatter(pii.phone_replacement))
                final_labels.append("pii (phone numbers)")
        # Metadata (source, url, license, ...) as top-level columns, as Hub datasets have them.
        final_steps.append(JsonlWriter(str(work / "output"), output_filename="${rank}.jsonl.gz", expand_metadata=True))
        final_labels.append("write dataset")
        stages.append(Stage("write", final_steps, final_labels, tasks))
        return stages

    def check_data(self) -> None:
        """Raise `RecipeError` for a local source or eval set that is not there or lacks its text field."""
        for i, source in enumerate(self.sources):
            if source.resolved_format() != "hub":
                if not Path(source.path).exists():
                    raise RecipeError(f"sources[{i}] ({source.source}): {source.path} not found.")
                source.check_columns(f"sources[{i}]")
        decont = decontamination_settings(self.args.decontamination)
        for i, eval_set in enumerate(decont.eval_sets if decont else []):
            if eval_set.is_local():
                if not Path(eval_set.path).is_file():
                    raise RecipeError(f"decontamination.eval_sets[{i}]: {eval_set.path} not found.")
                logger.info("Decontaminating against %s: %d items", eval_set.path, len(eval_set.texts()))

    def describe(self) -> str:
        lines = []
        for source, rate in zip(self.sources, self.rates):
            lines.append(f"source {source.source}: {source.path} ({source.resolved_format()}), weight "
                         f"{source.weight:g}, keep rate {rate:.3f}")
        for stage in self.stages:
            lines.append(f"stage {stage.name} ({stage.tasks} task{'s' if stage.tasks > 1 else ''}):")
            lines += [f"    {label:<28} {step}" for label, step in zip(stage.labels, stage.steps)]
        lines.append(f"output: {self.output_dir / DATA}")
        return "\n".join(lines)

    def executors(self) -> list:
        """One datatrove executor per stage, each depending on the one before."""
        executors, previous = [], None
        for stage in self.stages:
            workers = stage.tasks if self.args.workers == -1 else min(self.args.workers, stage.tasks)
            common = dict(tasks=stage.tasks, workers=workers, depends=previous,
                          logging_dir=str(self.output_dir / LOGS / stage.name))
            if self.args.executor == "slurm":
                executor = SlurmPipelineExecutor(stage.steps, job_name=f"prepare_data_{stage.name}",
                                                 **common, **slurm_settings(self.args.slurm))
            else:
                executor = LocalPipelineExecutor(stage.steps, **common)
            executors.append(executor)
            previous = executor
        return executors

    def run(self) -> None:
        """Run every stage (local), or submit them as a chain of job arrays with a last job that finishes (slurm)."""
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


def start(args: PrepareDataArguments) -> None:
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
    for name in (DATA, DROPPED, LOGS, WORK):
        shutil.rmtree(output_dir / name, ignore_errors=True)
    for name in REPORT_FILES:
        (output_dir / name).unlink(missing_ok=True)
    write_json_atomic(run_file, {"recipe": fingerprint, "started": time.time()})


class FinishStep(PipelineStep):
    """The last job of a slurm run: `finish` and mark the stage complete, as the script does after a local run."""

    type = "🏁 - FINISH"
    name = "report"

    def __init__(self, plan: "Plan"):
        super().__init__()
        self.plan = plan

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from llm_recipes.stage import mark_complete

        mark_complete(self.plan.output_dir, finish(self.plan))
        return data


def merged_stats(output_dir: Path, stage: Stage) -> list[dict]:
    """datatrove's per-task stats of one stage, summed (as its merge_stats tool does), one dict per step."""
    per_task = sorted((output_dir / LOGS / stage.name / "stats").glob("*.json"))
    merged = sum((PipelineStats.from_json(json.loads(p.read_text())) for p in per_task), start=PipelineStats())
    return [{"step": label, **stats.to_dict()} for label, stats in zip(stage.labels, merged.stats)]


def _total(stats: dict, key: str) -> int:
    value = stats.get("stats", {}).get(key, 0)
    return int(value["total"] if isinstance(value, dict) else value)


def step_rows(stages: list[Stage], stats: dict[str, list[dict]]) -> list[dict]:
    """Documents in and out of every step that documents flow through, and why the dropped ones were dropped."""
    rows = []
    for stage in stages:
        for step, step_stats in zip(stage.steps, stats[stage.name]):
            label = step_stats["step"]
            counts = step_stats.get("stats", {})
            characters = _total(step_stats, "doc_len")
            row = {"stage": stage.name, "step": label, "in": None, "out": None, "dropped": None,
                   "characters_out": characters or None, "details": ""}
            if isinstance(step, (JsonlReader, ParquetReader, HuggingFaceDatasetReader)):
                if stage.name != "filter":
                    continue  # re-reading an intermediate folder is not a step of the preparation
                row["out"] = _total(step_stats, "documents")
            elif isinstance(step, (BaseFilter, ExactDedupFilter, MinhashDedupFilter)):
                row["in"], row["out"] = _total(step_stats, "total"), _total(step_stats, "forwarded")
                row["dropped"] = _total(step_stats, "dropped")
                reasons = {k.removeprefix("dropped_"): _total(step_stats, k)
                           for k in counts if k.startswith("dropped_")}
                row["details"] = ", ".join(f"{k}: {v:,}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
            elif isinstance(step, BaseFormatter):
                row["in"] = row["out"] = _total(step_stats, "total")
                row["dropped"] = 0
                row["details"] = f"redacted in {_total(step_stats, 'documents_redacted'):,} documents"
            elif isinstance(step, JsonlWriter) and stage is stages[-1]:
                row["out"] = _total(step_stats, "total")
            else:
                continue
            rows.append(row)
    return rows


def summary_markdown(rows: list[dict], summary: dict) -> str:
    def cell(value):
        return "" if value is None else f"{value:,}"

    lines = [
        "# Data preparation",
        "",
        f"{summary['documents_in']:,} documents read, {summary['documents_out']:,} written to `{DATA}/` "
        f"({summary['documents_out'] / max(summary['documents_in'], 1):.1%}) in {summary['seconds']:.0f} s "
        f"({summary['documents_per_second']:.0f} documents/s).",
        "",
        "| stage | step | documents in | documents out | dropped | characters out | details |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['step']} | {cell(r['in'])} | {cell(r['out'])} | {cell(r['dropped'])} | "
                     f"{cell(r['characters_out'])} | {r['details']} |")
    lines += ["", "Every step's full datatrove stats are in `stats.json`; its logs in `logs/<stage>/`."]
    return "\n".join(lines) + "\n"


def finish(plan: Plan, seconds: float | None = None) -> dict:
    """Merge the stats, write `stats.json` and `summary.md`, move the dataset (and dropped documents) into place,
    remove `work/`, and return the summary for `stage_complete.json`."""
    output_dir, work = plan.output_dir, plan.work
    stats = {stage.name: merged_stats(output_dir, stage) for stage in plan.stages}
    rows = step_rows(plan.stages, stats)
    if seconds is None:
        seconds = time.time() - json.loads((work / "run.json").read_text())["started"]
    documents_in = sum(r["out"] for r in rows if r["stage"] == "filter" and r["step"].startswith("read "))
    documents_out = rows[-1]["out"]
    summary = {
        "stage": "prepare_data", "documents_in": documents_in, "documents_out": documents_out,
        "seconds": round(seconds, 2), "documents_per_second": round(documents_in / max(seconds, 1e-9), 1),
        "data": str(output_dir / DATA),
        "steps": [{k: r[k] for k in ("stage", "step", "in", "out", "dropped")} for r in rows],
    }
    # A rerun of a finish that was cut off finds the dataset already moved.
    for name, source in ((DATA, work / "output"), (DROPPED, work / DROPPED)):
        if source.is_dir():
            shutil.rmtree(output_dir / name, ignore_errors=True)
            source.rename(output_dir / name)
    (output_dir / DATA).mkdir(exist_ok=True)  # every document may have been dropped
    write_json_atomic(output_dir / "stats.json", stats)
    (output_dir / "summary.md").write_text(summary_markdown(rows, summary))
    if not plan.args.keep_work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return summary
