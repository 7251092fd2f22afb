"""The regression gate: does a model lose, task by task, what an earlier release had?

A model's lm-eval results (`results.json`, lm-eval's own format, with standard errors) are compared with a baseline's:
a results file, a folder holding one (an evaluate.py output), or a Hub repo holding one at a revision (read from the
cache when the machine is offline). A metric regresses when it moves the wrong way (lm-eval's `higher_is_better`) by
more than `z` standard errors of the difference, sqrt(se_new² + se_old²), and by more than `min_drop`: a drop within
the noise of the two measurements is not a regression, and a task measured on fewer documents needs a larger drop.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from llm_recipes.recipe import RecipeError

RESULTS_FILE = "results.json"


@dataclass
class BaselineArguments:
    """The regression gate's keys, shared by evaluate.py (every task both results hold) and export.py (its
    `eval_task`, before anything is published)."""

    baseline_results: str | None = field(
        default=None, metadata={"help": "An earlier release's lm-eval results: a results.json, a folder holding one "
                                "(an evaluate.py output, an export), or a Hub repo holding one. A regression against "
                                "it fails the stage, naming the task, the fall and the baseline."})
    baseline_revision: str | None = field(default=None, metadata={"help": "Hub revision of `baseline_results`."})
    regression_z: float = field(
        default=2.0, metadata={"help": "A fall counts as a regression beyond this many standard errors of the "
                               "difference (both results' standard errors)."})
    regression_min_drop: float = field(
        default=0.0, metadata={"help": "...and beyond this absolute fall (for metrics without a standard error)."})


@dataclass
class Regression:
    """A metric of a task that fell beyond its threshold."""

    task: str
    metric: str
    baseline: float
    current: float
    threshold: float

    def describe(self, against: str) -> str:
        return (f"{self.task} {self.metric}: {self.current:.4g} against {self.baseline:.4g} in {against}, a fall of "
                f"{abs(self.baseline - self.current):.4g} beyond the {self.threshold:.4g} that noise allows")


def load_baseline(source: str, revision: str | None = None) -> dict:
    """The lm-eval results of an earlier release: a results file, a folder holding `results.json`, or a Hub repo
    holding it at `revision`."""
    path = Path(source)
    if path.is_dir():
        path = path / RESULTS_FILE
    if path.is_file():
        return json.loads(path.read_text())
    if source.count("/") != 1 or source.startswith((".", "/")):
        raise RecipeError(f"baseline_results: no results file at {source} (a results.json, a folder holding one, "
                          "or a Hub repo id).")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return json.loads(Path(hf_hub_download(source, RESULTS_FILE, revision=revision)).read_text())
    except LocalEntryNotFoundError as e:
        raise RecipeError(f"baseline_results: {source}@{revision or 'main'} has no {RESULTS_FILE} in the cache, and "
                          "the Hub cannot be reached; download it where it can (`hf download "
                          f"{source} {RESULTS_FILE}`), or give a local results file.") from e


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def regressions(current: dict, baseline: dict, z: float = 2.0, min_drop: float = 0.0,
                tasks: list[str] | None = None) -> list[Regression]:
    """Every metric of `tasks` (default: every task both results hold) that regressed from `baseline`."""
    found = []
    shared = [t for t in current["results"] if t in baseline.get("results", {}) and (tasks is None or t in tasks)]
    for task in shared:
        now, before = current["results"][task], baseline["results"][task]
        higher = current.get("higher_is_better", {}).get(task, {})
        for key, value in now.items():
            if "_stderr" in key or _number(value) is None or _number(before.get(key)) is None:
                continue
            metric = key.split(",")[0]
            stderr_key = key.replace(",", "_stderr,") if "," in key else f"{key}_stderr"
            spread = math.hypot(_number(now.get(stderr_key)) or 0.0, _number(before.get(stderr_key)) or 0.0)
            fall = (before[key] - value) if higher.get(metric, True) else (value - before[key])
            threshold = max(z * spread, min_drop)
            if fall > threshold:
                found.append(Regression(task, key, float(before[key]), float(value), threshold))
    return found
