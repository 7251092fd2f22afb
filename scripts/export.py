"""Deployment: merge a LoRA adapter into its base, quantize, measure what that costs, write the card, publish.

    python scripts/export.py --config recipes/tiny/export.yaml
    python scripts/export.py --config recipes/qwen3-0.6b/export.yaml     # bitsandbytes 4-bit, on a GPU

1. `adapter_name_or_path` is merged into `model_name_or_path` (peft's merge_and_unload) in full precision.
2. `quantization` quantizes the weights as Transformers loads them, saved as safetensors that plain
   `from_pretrained` reloads: `int8_weight_only` or `int8_dynamic` through torchao (CPU and GPU), `bnb_8bit` or
   `bnb_4bit` (NF4) through bitsandbytes (CUDA).
3. Size on disk, greedy generation speed (tokens/s) and the lm-eval score of `eval_task` are measured on the
   unquantized model and on the exported one. When the score drops by more than `max_score_drop`, the export is
   refused: nothing is published and the stage is not marked complete.
4. The model card (lineage, quantization, measurements, model-index) is written, and the folder is pushed to
   `hub_model_id` (`hub_dry_run: true` writes exactly what would be uploaded, beside the output folder).
"""

import llm_recipes  # noqa: F401, I001  first of all: it keeps known library start-up noise out of the log
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import EvalResult
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_recipes import stage
from llm_recipes.evaluation import lm_eval_run
from llm_recipes.hub import LINEAGE_FILE, check_push_settings, push_folder, write_model_card
from llm_recipes.model import format_count, torch_dtype
from llm_recipes.recipe import RecipeError, RecipeParser
from llm_recipes.regression import RESULTS_FILE, BaselineArguments, load_baseline, regressions

QUANTIZATIONS = ("none", "int8_weight_only", "int8_dynamic", "bnb_8bit", "bnb_4bit")


@dataclass
class ExportArguments(BaselineArguments):
    model_name_or_path: str = field(default=None, metadata={"help": "The model to export (a folder or Hub id)."})
    output_dir: str = field(default=None, metadata={"help": "Where the exported model and its card are written."})
    adapter_name_or_path: str | None = field(
        default=None, metadata={"help": "A peft (LoRA) adapter merged into `model_name_or_path` before anything else."})
    quantization: str = field(
        default="none", metadata={"help": "none; int8_weight_only or int8_dynamic (torchao: CPU and GPU); bnb_8bit or "
                                  "bnb_4bit (bitsandbytes NF4: CUDA).", "choices": QUANTIZATIONS})
    dtype: str = field(default="float32", metadata={"help": "dtype of the unquantized weights: float32, bfloat16."})
    eval_task: str | None = field(
        default=None, metadata={"help": "lm-eval task scored before and after quantization (tasks/ or the registry)."})
    eval_metric: str = field(
        default="exact_match,strict", metadata={"help": "The metric of `eval_task` compared, as lm-eval names it "
                                                "(metric,filter); higher is better."})
    eval_chat_template: bool = field(
        default=True, metadata={"help": "Put `eval_task` prompts through the chat template (chat models)."})
    eval_limit: int | None = field(default=None, metadata={"help": "Documents of `eval_task`; all if unset."})
    include_path: str | None = field(default="tasks/tiny", metadata={"help": "Folder of our lm-eval task YAMLs."})
    max_score_drop: float = field(
        default=0.02, metadata={"help": "Largest fall of `eval_metric` (absolute) that may be published."})
    speed_prompt: str = field(
        default="What is 21 + 38?", metadata={"help": "Chat message answered greedily to measure tokens/s."})
    speed_new_tokens: int = field(default=64, metadata={"help": "Tokens generated for the speed measurement."})
    license: str = field(default="apache-2.0", metadata={"help": "License in the model card's metadata."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the exported folder to `hub_model_id`."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo of the exported model."})
    hub_revision: str | None = field(default=None, metadata={"help": "Branch of that repo (created if missing)."})
    hub_private_repo: bool = field(default=True, metadata={"help": "Create the repo private."})
    hub_dry_run: bool = field(
        default=False, metadata={"help": "Write what would be uploaded to `<output_dir>-hub-dry-run/`; upload "
                                 "nothing."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run modelling code shipped with a checkpoint."})
    recipe_file: str | None = field(default=None, init=False)


ARGUMENTS = (ExportArguments,)


def check_recipe(args: ExportArguments) -> None:
    for key in ("model_name_or_path", "output_dir"):
        if not getattr(args, key):
            raise RecipeError(f"{key} is required (in the recipe or as --{key}).")
    if args.quantization.startswith("bnb") and not torch.cuda.is_available():
        raise RecipeError(f"quantization: {args.quantization} (bitsandbytes) needs a CUDA GPU, and this machine has "
                          "none; on a CPU use int8_weight_only or int8_dynamic (torchao).")
    if args.adapter_name_or_path and not (Path(args.adapter_name_or_path) / "adapter_config.json").is_file() \
            and Path(args.adapter_name_or_path).exists():
        raise RecipeError(f"adapter_name_or_path: {args.adapter_name_or_path} holds no adapter_config.json.")
    check_push_settings(args.push_to_hub, args.hub_dry_run, args.hub_model_id)


def quantization_config(name: str):
    if name == "none":
        return None
    if name.startswith("int8"):
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        return TorchAoConfig(Int8WeightOnlyConfig() if name == "int8_weight_only"
                             else Int8DynamicActivationInt8WeightConfig())
    from transformers import BitsAndBytesConfig

    if name == "bnb_8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def merge_adapter(args: ExportArguments, into: Path) -> None:
    """The base model with the adapter's weights added in, saved as a plain Transformers checkpoint."""
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, dtype=torch_dtype(args.dtype),
                                                trust_remote_code=args.trust_remote_code)
    merged = PeftModel.from_pretrained(base, args.adapter_name_or_path).merge_and_unload()
    merged.save_pretrained(into)
    tokenizer_source = args.adapter_name_or_path if (Path(args.adapter_name_or_path) / "tokenizer_config.json") \
        .is_file() else args.model_name_or_path
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(into)


def size_on_disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def tokens_per_second(folder: Path, args: ExportArguments) -> float:
    """Greedy generation speed of one reply of `speed_new_tokens` tokens, after a warm-up."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=args.trust_remote_code).eval()
    messages = [{"role": "user", "content": args.speed_prompt}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True).to(model.device)
    settings = dict(max_new_tokens=args.speed_new_tokens, min_new_tokens=args.speed_new_tokens, do_sample=False,
                    pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        model.generate(**inputs, **{**settings, "max_new_tokens": 4, "min_new_tokens": 4})
        started = time.perf_counter()
        model.generate(**inputs, **settings)
    return args.speed_new_tokens / (time.perf_counter() - started)


def score(folder: Path, args: ExportArguments) -> tuple[float, float | None]:
    """`eval_metric` of `eval_task` on the model in `folder`, with its standard error."""
    results = lm_eval_run(str(folder), [args.eval_task], include_path=args.include_path,
                          apply_chat_template=args.eval_chat_template, limit=args.eval_limit, batch_size=32,
                          trust_remote_code=args.trust_remote_code)["results"][args.eval_task]
    if args.eval_metric not in results:
        metrics = [k for k in results if k != "alias" and "_stderr" not in k]
        raise RecipeError(f"eval_metric: {args.eval_task} reports no {args.eval_metric!r}; it has "
                          f"{', '.join(metrics)}.")
    stderr = results.get(args.eval_metric.replace(",", "_stderr,"))
    return float(results[args.eval_metric]), float(stderr) if isinstance(stderr, float) else None


def check_against_baseline(args: ExportArguments, baseline: dict, score: float, stderr: float | None, summary: dict,
                           output_dir: Path) -> None:
    """The regression gate of a release: the exported model's `eval_metric` against the previous release's."""
    metric = args.eval_metric
    current = {"results": {args.eval_task: {metric: score, metric.replace(",", "_stderr,"): stderr}}}
    found = regressions(current, baseline, args.regression_z, args.regression_min_drop, tasks=[args.eval_task])
    summary["baseline_results"] = args.baseline_results
    if found:
        stage.write_json_atomic(output_dir.parent / f"{output_dir.name}.refused.json", summary)
        raise RecipeError(f"regression: {found[0].describe(args.baseline_results)}; nothing was published.")
    stage.logger.info("No regression of %s %s against %s.", args.eval_task, metric, args.baseline_results)


def main(argv=None):
    (args,) = RecipeParser(ARGUMENTS).parse(argv)
    stage.setup_logging()
    check_recipe(args)
    output_dir = Path(args.output_dir)
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (output_dir / LINEAGE_FILE).is_file():
        raise RecipeError(f"output_dir: {output_dir} holds files that are not an earlier export; choose another.")
    # Read before any compute: a baseline that cannot be found is named first.
    baseline = load_baseline(args.baseline_results, args.baseline_revision) if args.baseline_results else None
    if baseline is not None and args.eval_metric not in baseline.get("results", {}).get(args.eval_task, {}):
        raise RecipeError(f"baseline_results: {args.baseline_results} has no {args.eval_task} {args.eval_metric} (set "
                          "eval_task to a task the previous release was evaluated on).")
    shutil.rmtree(output_dir, ignore_errors=True)  # an export is made whole each time, never on top of an old one
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # Built beside its destination and moved there whole once it passed its checks.
    work = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        source = Path(args.model_name_or_path)
        if args.adapter_name_or_path:
            source = work / "merged"
            merge_adapter(args, source)
            stage.logger.info("Merged %s into %s", args.adapter_name_or_path, args.model_name_or_path)
        staged = work / "export"
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype(args.dtype), quantization_config=quantization_config(args.quantization),
            trust_remote_code=args.trust_remote_code)
        model.save_pretrained(staged)
        AutoTokenizer.from_pretrained(source).save_pretrained(staged)
        stage.logger.info("Exported %s parameters with quantization %s", format_count(model.num_parameters()),
                          args.quantization)
        del model

        summary = {"stage": "export", "quantization": args.quantization,
                   "merged_adapter": bool(args.adapter_name_or_path),
                   "size_bytes_before": size_on_disk(source), "size_bytes": size_on_disk(staged),
                   "tokens_per_second_before": tokens_per_second(source, args),
                   "tokens_per_second": tokens_per_second(staged, args)}
        eval_results = []
        if args.eval_task:
            (before, before_err), (after, after_err) = score(source, args), score(staged, args)
            summary.update(eval_task=args.eval_task, eval_metric=args.eval_metric, score_before=before,
                           score_before_stderr=before_err, score=after, score_stderr=after_err,
                           max_score_drop=args.max_score_drop)
            stage.logger.info("%s %s: %.3f before quantization, %.3f after", args.eval_task, args.eval_metric,
                              before, after)
            if before - after > args.max_score_drop:
                stage.write_json_atomic(output_dir.parent / f"{output_dir.name}.refused.json", summary)
                raise RecipeError(
                    f"max_score_drop: {args.eval_task} {args.eval_metric} fell from {before:.3f} to {after:.3f} with "
                    f"quantization {args.quantization}, more than the {args.max_score_drop} the recipe allows; "
                    "nothing was published. Try a milder quantization or raise the bound.")
            if baseline is not None:
                check_against_baseline(args, baseline, after, after_err, summary, output_dir)
            # The release carries its own results, in lm-eval's form: the baseline of the next one.
            measured = {args.eval_metric: after, args.eval_metric.replace(",", "_stderr,"): after_err}
            stage.write_json_atomic(staged / RESULTS_FILE, {"results": {args.eval_task: measured}})
            eval_results = [EvalResult(task_type="text-generation", dataset_type=args.eval_task,
                                       dataset_name=args.eval_task, metric_type=args.eval_metric.split(",")[0],
                                       metric_name=args.eval_metric, metric_value=round(after, 4))]
        staged.rename(output_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mib = 1024**2
    notes = {"quantization": args.quantization, "merged adapter": "yes" if args.adapter_name_or_path else "no",
             "size on disk (MiB)": f"{summary['size_bytes_before'] / mib:.2f} → {summary['size_bytes'] / mib:.2f}",
             "greedy tokens/s (this machine)": f"{summary['tokens_per_second_before']:.0f} → "
                                                f"{summary['tokens_per_second']:.0f}"}
    if args.eval_task:
        notes[f"{args.eval_task} {args.eval_metric}"] = f"{summary['score_before']:.3f} → {summary['score']:.3f}"
    write_model_card(output_dir, stage="export", parent=args.adapter_name_or_path or args.model_name_or_path,
                     recipe=args.recipe_file, summary=summary, details=notes, license=args.license,
                     hub_model_id=args.hub_model_id, eval_results=eval_results, details_title="Export")
    if args.push_to_hub or args.hub_dry_run:
        push_folder(output_dir, args.hub_model_id, revision=args.hub_revision, private=args.hub_private_repo,
                    dry_run=args.hub_dry_run, commit_message=f"export ({args.quantization})")
    stage.mark_complete(output_dir, summary)


if __name__ == "__main__":
    stage.run(main)
