"""Evaluation with lm-eval's Python API, on our own tasks (tasks/) or lm-eval's registry.

lm-eval does the work; this module adds what a recipe repository needs around it: a checkpoint with or without a
peft adapter, tasks run with and without the chat template in one results file, k sampled repeats with their
spread and pass@k, and a fingerprint so that an unchanged checkpoint is never evaluated twice.
"""

import hashlib
import json
import math
import statistics
from pathlib import Path

from llm_recipes.recipe import RecipeError, repo_path

# lm-eval's results file holds these per-task mappings; runs are merged by updating each of them.
PER_TASK_SECTIONS = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
                     "n-samples")
# Files of a checkpoint that decide what it computes; weights are fingerprinted by size and mtime, not read.
CHECKPOINT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                    "chat_template.jinja", "adapter_config.json", "special_tokens_map.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def fingerprint(model_path: str, adapter_path: str | None, include_path: str | None, settings: dict) -> str:
    """A hash of what decides a result: the checkpoint (and adapter) files, the task definitions and the
    evaluation settings. A Hub id is taken as is (its revision belongs in `settings`)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for folder in (model_path, adapter_path, include_path):
        if not folder or not Path(folder).is_dir():
            digest.update(str(folder).encode())
            continue
        for path in sorted(Path(folder).rglob("*")):
            if not path.is_file() or "checkpoint-" in str(path.relative_to(folder)) or "__pycache__" in path.parts:
                continue
            digest.update(str(path.relative_to(folder)).encode())
            if path.suffix in WEIGHT_SUFFIXES:
                stat = path.stat()
                digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
            elif path.name in CHECKPOINT_FILES or path.suffix in (".yaml", ".py", ".jinja"):
                digest.update(path.read_bytes())
    return digest.hexdigest()


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021) for one problem: n samples, `correct` of them right."""
    if n - correct < k:
        return 1.0
    return 1.0 - math.comb(n - correct, k) / math.comb(n, k)


def merge_results(runs: list[dict], chat_template_used: list[bool]) -> dict:
    """One lm-eval results mapping from several runs over disjoint task sets (plain and chat-templated)."""
    merged = {key: value for key, value in runs[0].items() if key not in PER_TASK_SECTIONS + ("samples",)}
    for section in PER_TASK_SECTIONS:
        merged[section] = {}
        for run in runs:
            merged[section].update(run.get(section) or {})
    merged["llm_recipes_runs"] = [{"tasks": sorted(run["results"]), "apply_chat_template": chat}
                                  for run, chat in zip(runs, chat_template_used)]
    return merged


def repeat_statistics(repeats: list[dict], ks: list[int]) -> dict:
    """Across k runs of the same tasks with sampling: each metric's mean, standard deviation and values, and for
    metrics scored 0/1 per sample, pass@k from the per-document successes (logged samples)."""
    summary = {}
    for task, metrics in repeats[0]["results"].items():
        entry = {}
        for metric, value in metrics.items():
            if not isinstance(value, (int, float)) or "_stderr" in metric or metric == "alias":
                continue
            values = [run["results"][task][metric] for run in repeats]
            entry[metric] = {"mean": statistics.fmean(values),
                             "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}
        samples_by_run = [run.get("samples", {}).get(task) for run in repeats]
        if all(samples_by_run):
            entry.update(_pass_at_k_from_samples(samples_by_run, ks))
        summary[task] = entry
    return summary


def _pass_at_k_from_samples(samples_by_run: list[list[dict]], ks: list[int]) -> dict:
    correct: dict[tuple[str, str, int], list[float]] = {}
    for samples in samples_by_run:
        for sample in samples:
            for metric in sample.get("metrics", []):
                value = sample.get(metric)
                if value in (0, 1, 0.0, 1.0, True, False):
                    correct.setdefault((metric, sample["filter"], sample["doc_id"]), []).append(float(value))
    by_metric: dict[str, list[list[float]]] = {}
    for (metric, filter_name, _), outcomes in correct.items():
        by_metric.setdefault(f"{metric},{filter_name}", []).append(outcomes)
    out = {}
    for name, per_doc in by_metric.items():
        n = min(len(outcomes) for outcomes in per_doc)
        for k in (k for k in ks if k <= n):
            out[f"pass@{k}:{name}"] = statistics.fmean(pass_at_k(n, int(sum(o[:n])), k) for o in per_doc)
    return out


def find_tasks(tasks: list[str], include_path: str | None):
    """lm-eval's TaskManager for `tasks`, from our folder `include_path` and lm-eval's registry; names any task
    found in neither."""
    from lm_eval.tasks import TaskManager

    include = repo_path(include_path) if include_path else None
    # Indexing lm-eval's own registry takes ~8 s; when every task is one of ours, the local folder is enough.
    task_manager = TaskManager(include_path=include, include_defaults=False) if include else None
    if task_manager is None or not all(task_manager.match_tasks([task]) for task in tasks):
        task_manager = TaskManager(include_path=include)
    unknown = [task for task in tasks if not task_manager.match_tasks([task])]
    if unknown:
        raise RecipeError(f"tasks: {', '.join(unknown)} not found in lm-eval's registry"
                          f"{' or ' + include_path if include_path else ''}.")
    return task_manager


def lm_eval_run(
    model_path: str,
    tasks: list[str],
    include_path: str | None = "tasks/tiny",
    adapter_path: str | None = None,
    apply_chat_template: bool = False,
    batch_size: int | str = 16,
    max_length: int | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    gen_kwargs: dict | None = None,
    seed: int = 0,
    log_samples: bool = False,
    dtype: str = "auto",
    device: str | None = None,
    system_instruction: str | None = None,
    trust_remote_code: bool = False,
    model=None,
    tokenizer=None,
) -> dict:
    """One `lm_eval.simple_evaluate` call; returns lm-eval's output mapping (results with standard errors,
    configs, versions, and samples when `log_samples`). Pass `model` (and `tokenizer`) to score a model in
    memory, e.g. during training, instead of loading `model_path`."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    task_manager = find_tasks(tasks, include_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if model is not None:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
                  device=device)
    else:
        model_args = {"pretrained": model_path, "dtype": dtype, "trust_remote_code": trust_remote_code,
                      "device": device, "batch_size": batch_size}
        if adapter_path:
            model_args["peft"] = adapter_path
        if max_length:
            model_args["max_length"] = max_length
        lm = HFLM(**model_args)
    seeds = {f"{kind}_seed": seed for kind in ("random", "numpy_random", "torch_random", "fewshot_random")}
    return simple_evaluate(
        model=lm, tasks=tasks, task_manager=task_manager, num_fewshot=num_fewshot, limit=limit,
        apply_chat_template=apply_chat_template, fewshot_as_multiturn=apply_chat_template and bool(num_fewshot),
        system_instruction=system_instruction, gen_kwargs=gen_kwargs, log_samples=log_samples, **seeds,
        bootstrap_iters=1000,  # standard errors of custom aggregations; lm-eval's 100,000 take minutes on CPU
    )


def lm_eval_scores(model_path: str, tasks: list[str], include_path: str = "tasks/tiny", **kwargs) -> dict:
    """Task -> metric -> value (standard errors included) for `tasks` on a checkpoint."""
    return lm_eval_run(model_path, tasks, include_path, **kwargs)["results"]


def score(results: dict, task: str, metric: str) -> float | None:
    """A metric from lm-eval's results mapping, whatever filter it was computed under (`exact_match,strict`)."""
    for key, value in results.get("results", {}).get(task, {}).items():
        if key.split(",")[0] == metric and "_stderr" not in key:
            return value
    return None


def load_results(output_dir: str | Path) -> dict | None:
    path = Path(output_dir) / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def add_lm_eval_callback(trainer, args) -> None:
    """Score `args.lm_eval_tasks` on the model being trained at every evaluation, logged through `report_to`."""
    if args.lm_eval_tasks:
        trainer.add_callback(LmEvalCallback(trainer, args.lm_eval_tasks, args.lm_eval_limit,
                                            args.lm_eval_chat_template))


try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - transformers is a dependency; this keeps the module importable alone
    TrainerCallback = object


class LmEvalCallback(TrainerCallback):
    """Runs lm-eval tasks on the live model when the Trainer evaluates, and logs each task's headline metrics as
    `lm_eval/<task>/<metric>`. Only the main process scores; the others wait for it at the next collective."""

    def __init__(self, trainer, tasks: list[str], limit: int | None = None, apply_chat_template: bool = False,
                 include_path: str = "tasks/tiny"):
        self.trainer, self.tasks, self.limit = trainer, tasks, limit
        self.apply_chat_template, self.include_path = apply_chat_template, include_path

    def on_evaluate(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        was_training = model.training
        model.eval()
        try:
            output = lm_eval_run(None, self.tasks, self.include_path, model=model,
                                 tokenizer=self.trainer.processing_class, apply_chat_template=self.apply_chat_template,
                                 limit=self.limit, batch_size=args.per_device_eval_batch_size,
                                 device=str(model.device))
        finally:
            model.train(was_training)
        scores = {}
        for task, metrics in output["results"].items():
            for metric, value in metrics.items():
                if isinstance(value, (int, float)) and "_stderr" not in metric:
                    scores[f"lm_eval/{task}/{metric.replace(',none', '')}"] = value
        self.trainer.log(scores)
