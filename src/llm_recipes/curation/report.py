"""The report of a `prepare_data` run: datatrove's per-task stats merged per job (`stats.json`), documents in and
out of every step with the reasons for what was dropped (`summary.md`), and the summary for `stage_complete.json`.
`plan.write_report` writes them. The report calls each datatrove job a stage, as its logs folder (`logs/<stage>/`) does.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING

from datatrove.pipeline.dedup import ExactDedupFilter, MinhashDedupFilter
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.readers import HuggingFaceDatasetReader, JsonlReader, ParquetReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.stats import PipelineStats

from llm_recipes.curation.config import DATA, LOGS

if TYPE_CHECKING:  # plan.py imports this module
    from llm_recipes.curation.plan import DatatroveJob


def merged_stats(output_dir: Path, job: "DatatroveJob") -> list[dict]:
    """datatrove's per-task stats of one job, summed (as its merge_stats tool does), one dict per step."""
    per_task = sorted((output_dir / LOGS / job.name / "stats").glob("*.json"))
    merged = sum((PipelineStats.from_json(json.loads(p.read_text())) for p in per_task), start=PipelineStats())
    return [{"step": label, **stats.to_dict()} for label, stats in zip(job.labels, merged.stats)]


def _total(stats: dict, key: str) -> int:
    value = stats.get("stats", {}).get(key, 0)
    return int(value["total"] if isinstance(value, dict) else value)


def step_rows(jobs: list["DatatroveJob"], stats: dict[str, list[dict]]) -> list[dict]:
    """Documents in and out of every step that documents flow through, and why the dropped ones were dropped."""
    rows = []
    for job in jobs:
        for step, step_stats in zip(job.steps, stats[job.name]):
            label = step_stats["step"]
            counts = step_stats.get("stats", {})
            characters = _total(step_stats, "doc_len")
            row = {"stage": job.name, "step": label, "in": None, "out": None, "dropped": None,
                   "characters_out": characters or None, "details": ""}
            if isinstance(step, (JsonlReader, ParquetReader, HuggingFaceDatasetReader)):
                if job.name != "filter":
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
            elif isinstance(step, JsonlWriter) and job is jobs[-1]:
                row["out"] = _total(step_stats, "total")
            else:
                continue
            rows.append(row)
    return rows


def step_times(jobs: list["DatatroveJob"], stats: dict[str, list[dict]]) -> list[dict]:
    """Every step's own time (datatrove's time_stats, summed over tasks) and the documents it handled per second,
    where it counts documents: what to profile first."""
    times = []
    for job in jobs:
        for step_stats in stats[job.name]:
            seconds = step_stats.get("time_stats", {}).get("total", 0.0)
            documents = _total(step_stats, "total") or _total(step_stats, "documents") or None
            times.append({"stage": job.name, "step": step_stats["step"], "seconds": round(seconds, 2),
                          "documents": documents,
                          "documents_per_second": round(documents / seconds) if documents and seconds else None})
    return times


def run_summary(rows: list[dict], seconds: float, data: Path, skipped: int = 0) -> dict:
    """What `stage_complete.json` says of a run: documents read, skipped as unreadable and written, time, the dataset
    and every step."""
    documents_in = sum(r["out"] for r in rows if r["stage"] == "filter" and r["step"].startswith("read "))
    return {
        "stage": "prepare_data", "documents_in": documents_in, "documents_skipped": skipped,
        "documents_out": rows[-1]["out"],
        "seconds": round(seconds, 2), "documents_per_second": round(documents_in / max(seconds, 1e-9), 1),
        "data": str(data),
        "steps": [{k: r[k] for k in ("stage", "step", "in", "out", "dropped")} for r in rows],
    }


def mixture_shares(jobs: list["DatatroveJob"], stats: dict[str, list[dict]], tokenizer: str | None) -> dict:
    """Each source's and each domain's documents, characters and tokens before the filters and as written, and its
    share of the tokens at both points, from the two `MixtureCounter` steps' stats: what the filters did to the
    mixture."""
    counted = {}
    for job in jobs:
        for label, step_stats in zip(job.labels, stats[job.name]):
            if label in ("mixture read", "mixture written"):
                counted[label] = step_stats.get("stats", {})
    shares = {"tokens": tokenizer or "words and punctuation marks"}
    for group in ("source", "domain"):
        table = {}
        for when, label in (("before", "mixture read"), ("after", "mixture written")):
            for key in counted.get(label, {}):
                name, _, unit = key.removeprefix(f"{group}=").rpartition("/")
                if key.startswith(f"{group}="):
                    table.setdefault(name, {})[f"{unit}_{when}"] = _total({"stats": counted[label]}, key)
        if not table:
            continue
        for when in ("before", "after"):
            total = max(sum(row.get(f"tokens_{when}", 0) for row in table.values()), 1)
            for row in table.values():
                row.setdefault(f"documents_{when}", 0), row.setdefault(f"characters_{when}", 0)
                row[f"share_{when}"] = round(row.setdefault(f"tokens_{when}", 0) / total, 4)
        shares[group] = dict(sorted(table.items(), key=lambda kv: -kv[1]["tokens_before"]))
    return shares


def summary_markdown(rows: list[dict], summary: dict) -> str:
    def cell(value):
        return "" if value is None else f"{value:,}"

    lines = [
        "# Data preparation",
        "",
        f"{summary['documents_in']:,} documents read, {summary['documents_out']:,} written to `{DATA}/` "
        f"({summary['documents_out'] / max(summary['documents_in'], 1):.1%}) in {summary['seconds']:.0f} s "
        f"({summary['documents_per_second']:.0f} documents/s)."
        + (f" {summary['documents_skipped']:,} unreadable source lines were skipped (skip_bad_records)."
           if summary.get("documents_skipped") else ""),
        "",
        "| stage | step | documents in | documents out | dropped | characters out | details |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['step']} | {cell(r['in'])} | {cell(r['out'])} | {cell(r['dropped'])} | "
                     f"{cell(r['characters_out'])} | {r['details']} |")
    shares = summary.get("mixture_shares", {})
    for group in ("source", "domain"):
        if group in shares:
            lines += ["", f"Each {group}'s share of the tokens ({shares['tokens']}), before the filters and as "
                      "written:", "", f"| {group} | documents read | tokens read | share | documents written "
                      "| tokens written | share |", "|---|---:|---:|---:|---:|---:|---:|"]
            lines += [f"| {name} | {v['documents_before']:,} | {v['tokens_before']:,} | {v['share_before']:.1%} | "
                      f"{v['documents_after']:,} | {v['tokens_after']:,} | {v['share_after']:.1%} |"
                      for name, v in shares[group].items()]
    classifier = summary.get("quality_classifier")
    if classifier:
        lines += ["", f"Quality classifier, on {classifier['held_out_pages']:,} labelled pages it was not trained on "
                  f"({classifier['held_out_bad_pages']:,} bad): precision {classifier['precision']:.1%}, recall "
                  f"{classifier['recall']:.1%}, good pages dropped {classifier['good_pages_dropped']:.1%}."]
    times = summary.get("step_times", [])
    if times:
        lines += ["", "Where the time went (each step's own time, summed over tasks):", "",
                  "| stage | step | seconds | documents | documents/s |", "|---|---|---:|---:|---:|"]
        lines += [f"| {t['stage']} | {t['step']} | {t['seconds']:.2f} | {cell(t['documents'])} | "
                  f"{cell(t['documents_per_second'])} |" for t in times if t["seconds"] >= 0.01]
    lines += ["", "Every step's full datatrove stats are in `stats.json`; its logs in `logs/<stage>/`."]
    return "\n".join(lines) + "\n"

