"""Evaluate a checkpoint with lm-eval: our tasks (tasks/) and lm-eval's registry (gsm8k, mmlu, ...).

    python scripts/evaluate.py --config recipes/tiny/eval.yaml --model_name_or_path runs/tiny/sft
    accelerate launch scripts/evaluate.py --config recipes/qwen3-0.6b/eval.yaml

`tasks` run on the plain prompt and `chat_tasks` through the tokenizer's chat template; both land in one
`results.json` in lm-eval's own format (with standard errors). With `num_samples: k` the sampled tasks are run k
times with different seeds and `repeats.json` gives each metric's mean, spread and pass@k. An unchanged
checkpoint (same files, tasks and settings) is not evaluated again.
"""

import llm_recipes  # noqa: F401, I001  first of all: it keeps known library start-up noise out of the log
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llm_recipes import stage
from llm_recipes.atomic_files import write_jsonl_atomic
from llm_recipes.evaluation import fingerprint, lm_eval_run, load_results, merge_results, repeat_statistics
from llm_recipes.recipe import RecipeError, RecipeParser
from llm_recipes.regression import BaselineArguments, load_baseline, regressions


@dataclass
class EvalArguments(BaselineArguments):
    model_name_or_path: str = field(
        default=None, metadata={"help": "Checkpoint to evaluate: a local folder or a Hub model id."})
    output_dir: str = field(default=None, metadata={"help": "Folder for results.json, samples and repeats.json."})
    adapter_name_or_path: str | None = field(
        default=None, metadata={"help": "A peft adapter applied on top of `model_name_or_path` (LoRA, QLoRA)."})
    model_revision: str = field(default="main", metadata={"help": "Hub revision of `model_name_or_path`."})
    tasks: list[str] = field(
        default_factory=list, metadata={"help": "Tasks or groups scored on the plain prompt, as a base model "
                                        "sees text (e.g. tiny_base, hellaswag, mmlu)."})
    chat_tasks: list[str] = field(
        default_factory=list, metadata={"help": "Tasks or groups whose prompts go through the tokenizer's chat "
                                        "template (e.g. tiny_chat, gsm8k, ifeval)."})
    include_path: str | None = field(
        default="tasks/tiny", metadata={"help": "Folder of our own lm-eval task YAMLs, added to the registry."})
    num_fewshot: int | None = field(default=None, metadata={"help": "Few-shot examples; the task's own if unset."})
    system_instruction: str | None = field(default=None, metadata={"help": "System prompt for chat tasks."})
    batch_size: str = field(default="auto", metadata={"help": "Batch size, or 'auto' to find the largest."})
    max_length: int | None = field(
        default=None, metadata={"help": "Context length; the model config's max_position_embeddings if unset."})
    limit: float | None = field(
        default=None, metadata={"help": "Documents per task (a fraction if < 1); for quick checks only."})
    dtype: str = field(default="auto", metadata={"help": "Weights dtype: auto, bfloat16, float32."})
    num_samples: int = field(
        default=1, metadata={"help": "Run every task this many times with sampling and different seeds, for "
                             "pass@k and each score's spread. 1: one greedy run."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature when num_samples > 1."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling when num_samples > 1."})
    pass_at_k: list[int] = field(default_factory=lambda: [1], metadata={"help": "k values of pass@k reported."})
    log_samples: bool = field(
        default=True, metadata={"help": "Write every prompt and answer (samples_<task>.jsonl), which the report "
                                "card quotes side by side."})
    seed: int = field(default=1234, metadata={"help": "Seed of the first run; repeat i uses seed + i."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run modelling code shipped with a Hub checkpoint."})
    force: bool = field(default=False, metadata={"help": "Evaluate again even if results.json is up to date."})


ARGUMENTS = (EvalArguments,)
# Keys that change where results go or what they are compared with, not the results: left out of the fingerprint.
NOT_IN_THE_RESULTS = ("output_dir", "force", "baseline_results", "baseline_revision", "regression_z",
                      "regression_min_drop")


def main(argv=None):
    (args,) = RecipeParser(ARGUMENTS).parse(argv)
    stage.setup_logging()
    for key in ("model_name_or_path", "output_dir"):
        if not getattr(args, key):
            raise RecipeError(f"{key} is required (in the recipe or as --{key}).")
    if not (args.tasks or args.chat_tasks):
        raise RecipeError("Name at least one task in `tasks` or `chat_tasks`.")
    if args.num_samples < 1:
        raise RecipeError(f"num_samples must be at least 1, got {args.num_samples}.")
    output_dir = Path(args.output_dir)
    # Read first: a baseline that cannot be found is named before any compute is spent.
    baseline = load_baseline(args.baseline_results, args.baseline_revision) if args.baseline_results else None
    settings = {key: value for key, value in asdict(args).items() if key not in NOT_IN_THE_RESULTS}
    print_key = fingerprint(args.model_name_or_path, args.adapter_name_or_path, args.include_path, settings)
    previous = load_results(output_dir)
    if previous and previous.get("llm_recipes_fingerprint") == print_key and not args.force:
        stage.logger.info("%s already holds results for this checkpoint, tasks and settings; reusing them.",
                          output_dir / "results.json")
        if baseline is not None:
            check_regressions(previous, baseline, args, output_dir)
        stage.mark_complete(output_dir, {"stage": "evaluate", "reused": True, "fingerprint": print_key})
        return

    started = time.time()
    common = dict(
        include_path=args.include_path, adapter_path=args.adapter_name_or_path, batch_size=_batch_size(args),
        max_length=args.max_length, limit=args.limit, num_fewshot=args.num_fewshot, dtype=args.dtype,
        system_instruction=args.system_instruction, trust_remote_code=args.trust_remote_code,
    )
    task_sets = [(tasks, chat) for tasks, chat in ((args.tasks, False), (args.chat_tasks, True)) if tasks]
    repeats = []
    for i in range(args.num_samples):
        sampling = {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p} \
            if args.num_samples > 1 else None
        runs = [lm_eval_run(args.model_name_or_path, tasks, apply_chat_template=chat, gen_kwargs=sampling,
                            seed=args.seed + i, log_samples=args.log_samples or args.num_samples > 1, **common)
                for tasks, chat in task_sets]
        merged = merge_results(runs, [chat for _, chat in task_sets])
        merged["samples"] = {task: samples for run in runs for task, samples in run.get("samples", {}).items()}
        repeats.append(merged)

    first = repeats[0]
    samples = first.pop("samples")
    if args.log_samples:
        from lm_eval.utils import handle_non_serializable

        for task, task_samples in samples.items():
            write_jsonl_atomic(output_dir / f"samples_{task}.jsonl", task_samples, default=handle_non_serializable)
    if args.num_samples > 1:
        stage.write_json_atomic(output_dir / "repeats.json", repeat_statistics(repeats, args.pass_at_k))
    first["llm_recipes_fingerprint"] = print_key
    first["llm_recipes_model"] = {"model_name_or_path": args.model_name_or_path,
                                  "adapter_name_or_path": args.adapter_name_or_path}
    stage.write_json_atomic(output_dir / "results.json", _json_safe(first))
    stage.logger.info("Results (%s):\n%s", output_dir / "results.json", _table(first))
    if baseline is not None:
        check_regressions(_json_safe(first), baseline, args, output_dir)
    stage.mark_complete(output_dir, {"stage": "evaluate", "wall_seconds": time.time() - started,
                                     "fingerprint": print_key})


def check_regressions(results: dict, baseline: dict, args: EvalArguments, output_dir: Path) -> None:
    """The regression gate against `baseline_results`: regressions.json, and a failure naming each regression."""
    found = regressions(results, baseline, args.regression_z, args.regression_min_drop)
    stage.write_json_atomic(output_dir / "regressions.json", {"baseline": args.baseline_results,
                                                                "regressions": [asdict(r) for r in found]})
    if found:
        raise RecipeError(f"regression against {args.baseline_results}: "
                          + "; ".join(r.describe(args.baseline_results) for r in found) + ".")
    stage.logger.info("No regression against %s.", args.baseline_results)


def _batch_size(args) -> int | str:
    return int(args.batch_size) if str(args.batch_size).isdigit() else args.batch_size


def _json_safe(payload):
    import json

    from lm_eval.utils import handle_non_serializable

    return json.loads(json.dumps(payload, default=handle_non_serializable))


def _table(results: dict) -> str:
    from lm_eval.utils import make_table

    return make_table(results)


if __name__ == "__main__":
    stage.run(main)
