"""Datasets named in recipes: loading, format checks, and mixing by sampling probability.

A recipe's `dataset_mixture` lists sources (a Hub id, or local files or a folder) with a `weight` each. Sources
are mixed with `datasets.interleave_datasets`, drawing every example from a source chosen with probability
proportional to its weight, until the example (or token) budget is spent. A small source is repeated rather than
a large one cut, and the mixture report says what each source contributed.
"""

import bisect
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import datasets

from llm_recipes.recipe import RecipeError, closest_key
from llm_recipes.values import checked_values

logger = logging.getLogger(__name__)

# The columns each kind of stage needs. A stage names its format; alternatives are tried in order.
FORMATS: dict[str, list[tuple[str, ...]]] = {
    "text": [("text",)],
    "conversational": [("messages",), ("prompt", "completion")],
    "preference": [("prompt", "chosen", "rejected"), ("chosen", "rejected")],  # explicit, or implicit prompt
    "prompt_answer": [("prompt", "answer")],
    "prompt": [("prompt",)],
}

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text", ".csv": "csv"}


class DatasetFormatError(ValueError):
    """A dataset that lacks what its stage needs."""


@dataclass
class DatasetSource:
    """One dataset of a mixture. `path` is a Hub id, a builder ("json", "parquet", ...) or a local file/folder."""

    path: str
    name: str | None = None
    data_files: str | list[str] | dict[str, str] | None = None
    data_dir: str | None = None
    split: str = "train"
    columns: list[str] | None = None
    rename_columns: dict[str, str] | None = None
    weight: float = 1.0
    revision: str | None = None
    # Keep only the rows whose columns hold these values ({flaw: answer_mismatch}; a list: any of them), read
    # before `columns` selects: one file's rows can make several named held-out sets, one per kind.
    where: dict[str, Any] | None = None

    def describe(self) -> str:
        files = self.data_files if isinstance(self.data_files, str) else None
        return files or self.path

    def load_kwargs(self, streaming: bool) -> dict[str, Any]:
        """Arguments for `datasets.load_dataset`; a local file or folder is read with the matching builder."""
        path, data_files = self.path, self.data_files
        local = Path(path)
        if data_files is None and local.suffix in _BUILDERS:
            path, data_files = _BUILDERS[local.suffix], str(local)
        elif data_files is None and local.is_dir() and not (local / "dataset_info.json").exists():
            suffixes = sorted({p.suffix for p in local.rglob("*") if p.suffix in _BUILDERS})
            if len(suffixes) == 1:
                path, data_files = _BUILDERS[suffixes[0]], sorted(str(p) for p in local.rglob(f"*{suffixes[0]}"))
        return dict(
            path=path,
            name=self.name,
            data_files=data_files,
            data_dir=self.data_dir,
            split=self.split,
            revision=self.revision,
            streaming=streaming,
        )


@dataclass
class DatasetMixture:
    """What a recipe's `dataset_mixture:` block holds."""

    datasets: list[DatasetSource]
    # A list is one held-out set ("test"); a mapping of name -> dataset gives one named set each, which the
    # Trainer evaluates separately (eval_<name>_loss): e.g. domain and general perplexity after domain adaptation.
    eval_datasets: list[DatasetSource] | dict[str, DatasetSource] = field(default_factory=list)
    test_split_size: float | int | None = None
    max_examples: int | None = None
    max_tokens: int | None = None
    stopping_strategy: str = "all_exhausted"
    streaming: bool = False
    seed: int = 0

    @classmethod
    def from_recipe(cls, value: dict | None, where: str = "dataset_mixture") -> "DatasetMixture":
        """Build from the recipe's mapping, naming any unknown or missing key with its closest valid one."""
        if not isinstance(value, dict) or not value.get("datasets"):
            raise RecipeError(f"{where}: needs a 'datasets' list, e.g. datasets: [{{path: data/train.jsonl}}]")
        kwargs = _checked_fields(cls, value, where)
        for list_key in ("datasets", "eval_datasets"):
            sources = kwargs.get(list_key) or []
            if isinstance(sources, dict) and list_key == "eval_datasets":
                if "train" in sources:
                    raise RecipeError(f"{where}.eval_datasets: 'train' cannot name a held-out set.")
                kwargs[list_key] = {
                    name: DatasetSource(**_checked_fields(DatasetSource, s, f"{where}.{list_key}.{name}"))
                    for name, s in sources.items()
                }
                continue
            if not isinstance(sources, list):
                raise RecipeError(f"{where}.{list_key}: must be a list of datasets.")
            kwargs[list_key] = [
                DatasetSource(**_checked_fields(DatasetSource, s, f"{where}.{list_key}[{i}]"))
                for i, s in enumerate(sources)
            ]
        mixture = cls(**kwargs)
        if any(s.weight <= 0 for s in mixture.datasets):
            raise RecipeError(f"{where}: every dataset weight must be > 0.")
        if mixture.stopping_strategy not in ("all_exhausted", "first_exhausted", "all_exhausted_without_replacement"):
            raise RecipeError(f"{where}.stopping_strategy: expects all_exhausted, first_exhausted or "
                              f"all_exhausted_without_replacement, got {mixture.stopping_strategy!r}.")
        return mixture

    @property
    def all_sources(self) -> list[DatasetSource]:
        """Training and held-out sources alike."""
        held_out = self.eval_datasets.values() if isinstance(self.eval_datasets, dict) else self.eval_datasets
        return self.datasets + list(held_out)

    @property
    def probabilities(self) -> list[float]:
        total = sum(s.weight for s in self.datasets)
        return [s.weight / total for s in self.datasets]


def _checked_fields(cls, value: Any, where: str) -> dict:
    if isinstance(value, str) and cls is DatasetSource:
        return {"path": value}  # `- data/train.jsonl` is shorthand for `- path: data/train.jsonl`
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: expected a mapping, got {value!r}.")
    if cls is DatasetSource:
        # alignment-handbook's names for a dataset's Hub id and config: its recipes come over as they are.
        value = {{"id": "path", "config": "name"}.get(key, key): v for key, v in value.items()}
    return checked_values(cls, value, where, required=True, list_valid_keys=False)


def check_format(columns: list[str], fmt: str, source: str) -> tuple[str, ...]:
    """Return the column set of `fmt` that `columns` satisfies, or raise naming the missing column and source."""
    options = FORMATS[fmt]
    for needed in options:
        if all(c in columns for c in needed):
            return needed
    # Name what is missing from the alternative the dataset comes closest to.
    needed = min(options, key=lambda o: sum(c not in columns for c in o))
    missing = [c for c in needed if c not in columns]
    alternatives = " or ".join("/".join(o) for o in options)
    raise DatasetFormatError(
        f"Dataset '{source}' has no column '{missing[0]}' (this stage needs {alternatives}; "
        f"the dataset has {', '.join(columns) or 'no columns'}). "
        "Select or rename columns with `columns:` / `rename_columns:` in the recipe."
    )


def check_declared_columns(mixture: DatasetMixture, fmt: str) -> None:
    """Check the format against the `columns:` a recipe declares, without loading anything (for Hub datasets)."""
    for source in mixture.all_sources:
        if source.columns is not None:
            renamed = [(source.rename_columns or {}).get(c, c) for c in source.columns]
            check_format(renamed, fmt, source.describe())


ROLES = ("system", "user", "assistant", "tool")


def local_json_files(source: DatasetSource) -> list[str]:
    """The local JSON Lines files a source reads (none for a Hub dataset or another format)."""
    kwargs = source.load_kwargs(streaming=False)
    if kwargs["path"] != "json":
        return []
    files = kwargs["data_files"]
    files = [files] if isinstance(files, str) else list(files.values()) if isinstance(files, dict) else list(files)
    return [f for f in files if isinstance(f, str) and f.endswith(".jsonl") and Path(f).is_file()]


def row_problem(row: dict, fmt: str) -> str | None:
    """What is wrong with one row of a stage's data that its columns alone do not show, or None."""
    messages = row.get("messages")
    if fmt == "conversational" and isinstance(messages, list):
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                return f"messages[{i}] is not a mapping of role and content"
            if message.get("role") not in ROLES:
                return f"messages[{i}] has the role {message.get('role')!r}; roles are {', '.join(ROLES)}"
            content = message.get("content")
            if not isinstance(content, str) and not (content is None and message.get("tool_calls")):
                return f"messages[{i}] ({message['role']}) has content {content!r}; content must be text"
    if fmt == "preference" and "chosen" in row and row.get("chosen") == row.get("rejected"):
        return "the chosen reply is the rejected one, so the pair teaches nothing"
    return None


def check_json_lines(path: str, fmt: str) -> None:
    """Read a JSON Lines file strictly before `datasets` does (it names neither file nor line): UTF-8, one JSON
    object per line, at least one row, and each row sound for the stage's format."""
    rows = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}, line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetFormatError(f"{where}: byte {e.start + 1} is not UTF-8 ({raw[e.start:e.start + 1]!r}); "
                                         "save the file as UTF-8.") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetFormatError(f"{where}: not valid JSON ({e.msg} at column {e.colno}).") from None
            if not isinstance(row, dict):
                raise DatasetFormatError(f"{where}: a row must be a JSON object, got {type(row).__name__}.")
            problem = row_problem(row, fmt)
            if problem:
                raise DatasetFormatError(f"{where}: {problem}.")
            rows += 1
    if rows == 0:
        raise DatasetFormatError(f"{path}: the file is empty; a dataset needs at least one row.")


def load_source(source: DatasetSource, fmt: str, streaming: bool = False):
    """Load one source, keep and rename the columns the recipe asks for, and check it has `fmt`'s columns."""
    for path in local_json_files(source):
        check_json_lines(path, fmt)
    try:
        dataset = datasets.load_dataset(**source.load_kwargs(streaming))
    except FileNotFoundError as e:
        raise DatasetFormatError(f"Dataset '{source.describe()}' could not be found: {e}") from e
    columns = list(dataset.column_names or [])
    if source.where:
        dataset = keep_rows_where(dataset, source, columns)
    if source.columns is not None:
        missing = [c for c in source.columns if c not in columns]
        if missing:
            raise DatasetFormatError(
                f"Dataset '{source.describe()}' has no column '{missing[0]}' listed in `columns:` "
                f"(it has {', '.join(columns)})."
            )
        dataset = dataset.select_columns(source.columns)
    if source.rename_columns:
        dataset = dataset.rename_columns(source.rename_columns)
    needed = check_format(list(dataset.column_names), fmt, source.describe())
    if source.columns is None and not streaming:
        # Sources may carry extra columns (ids, urls); keep only what the stage reads so they can be mixed.
        optional = ("tools", "margin")  # tool schemas of conversations; reward-model margins of preference pairs
        dataset = dataset.select_columns(list(needed) + [c for c in optional if c in dataset.column_names])
    return dataset


def keep_rows_where(dataset, source: DatasetSource, columns: list[str]):
    """The rows of `dataset` whose columns hold the values of `source.where`; refused if a column is missing or if
    no row is left."""
    wanted = {}
    for column, value in source.where.items():
        if column not in columns:
            suggestion = closest_key(column, columns)
            raise DatasetFormatError(f"Dataset '{source.describe()}' has no column '{column}' named in `where:`"
                                     + (f"; did you mean '{suggestion}'?" if suggestion else "")
                                     + f" (it has {', '.join(columns)}).")
        wanted[column] = set(value) if isinstance(value, list) else {value}
    kept = dataset.filter(lambda row: all(row[c] in values for c, values in wanted.items()))
    if not isinstance(kept, datasets.IterableDataset) and len(kept) == 0:
        raise DatasetFormatError(f"Dataset '{source.describe()}': no row has {source.where} (`where:`).")
    return kept


def _merged_feature(a, b, column: str):
    """The type both `a` and `b` cast to: the union of struct fields, a null type taking the other's type, JSON
    (what `datasets` infers for rows of mixed shape) taking any other."""
    if a == b:
        return a
    if isinstance(a, datasets.Value) and a.dtype == "null":
        return b
    if isinstance(b, datasets.Value) and b.dtype == "null":
        return a
    if isinstance(a, datasets.Json) or isinstance(b, datasets.Json):
        return datasets.Json()  # rows of mixed shape, kept as JSON: any struct casts to it
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _merged_feature(a[k], b[k], f"{column}.{k}") if k in a and k in b else a.get(k, b.get(k))
                for k in [*a, *(k for k in b if k not in a)]}
    if isinstance(a, datasets.List) and isinstance(b, datasets.List):
        return datasets.List(_merged_feature(a.feature, b.feature, column))
    raise DatasetFormatError(f"Datasets of one mixture disagree on the type of '{column}': {a} and {b}. "
                             "Convert one of them, or select other columns with `columns:`.")


def align_features(sources: list) -> list:
    """Cast datasets to one schema so that they can be mixed, where they differ only in parts that one of them
    lacks: a column (conversations without `tools`) or a struct field (messages without `tool_calls`). What a
    dataset lacks is null, which chat templates read as absent."""
    if all(d.features == sources[0].features for d in sources):
        return sources
    merged = {}
    for d in sources:
        for column, feature in d.features.items():
            merged[column] = _merged_feature(merged[column], feature, column) if column in merged else feature
    aligned = []
    for d in sources:
        for column in merged:
            if column not in d.column_names:
                d = d.add_column(column, [None] * len(d))
        aligned.append(d.cast(datasets.Features(merged)))
    return aligned


@dataclass
class MixtureReport:
    """What each source contributed to a mixture."""

    rows: list[dict] = field(default_factory=list)
    total_examples: int = 0
    total_tokens: int | None = None

    def to_markdown(self) -> str:
        lines = [
            "| source | weight | rows available | examples taken | share | epochs | tokens |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            tokens = "" if r.get("tokens") is None else f"{r['tokens']:,}"
            lines.append(
                f"| {r['source']} | {r['weight']:.3f} | {r['available']:,} | {r['taken']:,} | "
                f"{r['share']:.1%} | {r['epochs']:.2f} | {tokens} |"
            )
        return "\n".join(lines)


def build_mixture(
    mixture: DatasetMixture, fmt: str, count_tokens: Callable[[dict], int] | None = None
) -> tuple[datasets.DatasetDict, MixtureReport]:
    """Load, check and mix the sources; return a DatasetDict with 'train' (and 'test' when asked) and a report.

    `count_tokens(example) -> int` turns `max_tokens` into a budget: examples are taken in mixture order until
    the budget is spent.
    """
    sources = [load_source(s, fmt, mixture.streaming) for s in mixture.datasets]
    if isinstance(mixture.eval_datasets, dict):
        held_out = {name: load_source(s, fmt, mixture.streaming) for name, s in mixture.eval_datasets.items()}
    elif mixture.eval_datasets:
        held_out = {"test": datasets.concatenate_datasets(
            align_features([load_source(s, fmt, mixture.streaming) for s in mixture.eval_datasets]))}
    else:
        held_out = {}
    if mixture.streaming:
        return _stream_mixture(mixture, sources, held_out), MixtureReport()
    sources = align_features(sources)

    tagged = [d.add_column("source_index", [i] * len(d)) for i, d in enumerate(sources)]
    if len(tagged) == 1:
        mixed = tagged[0].shuffle(seed=mixture.seed)
    else:
        mixed = datasets.interleave_datasets(
            tagged, probabilities=mixture.probabilities, seed=mixture.seed,
            stopping_strategy=mixture.stopping_strategy,
        )
    if mixture.max_examples is not None:
        mixed = mixed.select(range(min(mixture.max_examples, len(mixed))))

    token_counts = None
    if count_tokens is not None:
        token_counts = [count_tokens(example) for example in mixed]
        if mixture.max_tokens is not None:
            # Keep examples up to and including the one that spends the budget.
            keep = min(bisect.bisect_left(list(itertools.accumulate(token_counts)), mixture.max_tokens) + 1,
                       len(token_counts))
            mixed = mixed.select(range(keep))
            token_counts = token_counts[:keep]
    elif mixture.max_tokens is not None:
        raise RecipeError("dataset_mixture.max_tokens needs a stage that counts tokens; use max_examples here.")

    report = _report(mixture, sources, mixed["source_index"], token_counts)
    mixed = mixed.remove_columns("source_index")

    splits = {"train": mixed}
    if mixture.test_split_size:
        split = mixed.train_test_split(test_size=mixture.test_split_size, seed=mixture.seed)
        splits = {"train": split["train"], "test": split["test"]}
    for name, dataset in held_out.items():
        splits[name] = (datasets.concatenate_datasets(align_features([splits[name], dataset]))
                        if name in splits else dataset)
    return datasets.DatasetDict(splits), report


def _report(mixture, sources, source_index, token_counts) -> MixtureReport:
    probabilities = mixture.probabilities
    report = MixtureReport(total_examples=len(source_index))
    if token_counts is not None:
        report.total_tokens = sum(token_counts)
    for i, (spec, dataset) in enumerate(zip(mixture.datasets, sources)):
        taken = sum(1 for s in source_index if s == i)
        tokens = None
        if token_counts is not None:
            tokens = sum(n for s, n in zip(source_index, token_counts) if s == i)
        report.rows.append(dict(
            source=spec.describe(), weight=probabilities[i], available=len(dataset), taken=taken,
            share=taken / max(len(source_index), 1), epochs=taken / max(len(dataset), 1), tokens=tokens,
        ))
    return report


def _stream_mixture(mixture, sources, held_out) -> datasets.IterableDatasetDict:
    mixed = sources[0] if len(sources) == 1 else datasets.interleave_datasets(
        sources, probabilities=mixture.probabilities, seed=mixture.seed, stopping_strategy=mixture.stopping_strategy
    )
    mixed = mixed.shuffle(seed=mixture.seed, buffer_size=10_000)
    if mixture.max_examples is not None:
        mixed = mixed.take(mixture.max_examples)
    return datasets.IterableDatasetDict({"train": mixed, **held_out})


def tokenize_and_pack(dataset, tokenizer, seq_length: int, num_proc: int | None = None, packing: bool = True):
    """Tokenize a text dataset and end every document with EOS.

    With `packing`, the token stream is cut into full blocks of `seq_length` (TRL's "wrapped" packing): no
    padding, and the last partial block is dropped. Without it, each document is one sequence, truncated to
    `seq_length` (its EOS kept) and padded per batch by the collator: slower, but a document is never split,
    which tasks whose question depends on the start of the document (long-context retrieval) need.
    """
    from trl import pack_dataset

    eos = [tokenizer.eos_token_id]
    limit = None if packing else seq_length - 1

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [x[:limit] + eos for x in ids]}

    tokenized = dataset.map(
        tokenize, batched=True, remove_columns=["text"], num_proc=num_proc, desc="Tokenizing"
    )
    if not packing:
        return tokenized
    packed = pack_dataset(tokenized, seq_length, strategy="wrapped", map_kwargs={"num_proc": num_proc})
    return packed.filter(lambda ids: len(ids) == seq_length, input_columns="input_ids", num_proc=num_proc)
