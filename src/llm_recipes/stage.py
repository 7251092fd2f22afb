"""What every stage script does around its own work: logging, resuming, and finishing a run cleanly.

alignment-handbook repeats these lines in every script; we write them once. A stage's output folder is complete
only when `stage_complete.json` is in it, written last and atomically, so the pipeline runner (and a user) can
tell a finished stage from one that was cut off.
"""

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import transformers
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger("llm_recipes")

COMPLETE_MARKER = "stage_complete.json"
TRAINER_STATE = "trainer_state.json"  # Trainer writes it last in a checkpoint folder
# How long a multi-process run waits, with the GIL released, before its interpreter exits (see `finish`).
EXIT_GRACE_SECONDS = 1.0


@dataclass
class StageArguments:
    """Keys every stage shares. Each stage's own dataclass extends this one."""

    dataset_mixture: dict | None = field(
        default=None,
        metadata={"help": "Datasets to train on and how to mix them: a mapping with `datasets` (a list of "
                  "{path, data_files, split, columns, rename_columns, weight}), and optionally `eval_datasets`, "
                  "`test_split_size`, `max_examples`, `max_tokens`, `seed`. See README."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Tokenizer to use; defaults to the model's own (`model_name_or_path`)."},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run modelling code shipped with a Hub checkpoint. Off unless a recipe turns it on."},
    )
    lm_eval_tasks: list[str] = field(
        default_factory=list,
        metadata={"help": "lm-eval tasks (tasks/ or the registry) scored on the model at every evaluation during "
                  "training and logged through `report_to` as lm_eval/<task>/<metric>. Empty: none."},
    )
    lm_eval_limit: int | None = field(
        default=None, metadata={"help": "Documents per task for `lm_eval_tasks`; keep it small, it runs often."})
    lm_eval_chat_template: bool = field(
        default=False, metadata={"help": "Put `lm_eval_tasks` prompts through the chat template (chat models)."})
    dry_run: bool = field(
        default=False,
        metadata={"help": "Parse and check the recipe and data, size the model on the meta device, print "
                  "parameters, memory per device, tokens per optimizer step and total steps, then exit."},
    )
    license: str = field(
        default="apache-2.0", metadata={"help": "License in the model card's metadata (a Hub license id)."})
    hub_dry_run: bool = field(
        default=False,
        metadata={"help": "Write exactly what a push would upload to `<output_dir>-hub-dry-run/` (and the Hub calls "
                  "it would make to `<output_dir>-hub-dry-run.hub_calls.json`) and upload nothing. Needs "
                  "`hub_model_id`; leave `push_to_hub` off."},
    )
    global_batch_size: int | None = field(
        default=None,
        metadata={"help": "Examples per optimizer step over all processes (sequences, pairs, or sampled replies). "
                  "Gradient accumulation is derived from it, `per_device_train_batch_size` and the number of "
                  "processes, so that the recipe trains the same on any number of devices. Unset: "
                  "`gradient_accumulation_steps` as given."},
    )
    recipe_file: str | None = field(default=None, init=False)  # set by RecipeParser: the --config file


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write JSON so that a reader sees either the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)


def is_complete(output_dir: str | Path) -> bool:
    return (Path(output_dir) / COMPLETE_MARKER).is_file()


def mark_complete(output_dir: str | Path, summary: dict) -> None:
    write_json_atomic(Path(output_dir) / COMPLETE_MARKER, summary)


class _CurrentStdoutHandler(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is at the time (test runners and notebooks swap it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(training_args=None) -> None:
    """Log from the main process at INFO, and quietly from the others."""
    if not logger.handlers:  # our own handler: a library may already have configured the root logger
        handler = _CurrentStdoutHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    # Our own messages (mixture report, resuming, results) at INFO on the main process; Transformers keeps
    # the verbosity the recipe's `log_level` asks for.
    main_process = training_args is None or training_args.should_log
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    if training_args is not None:
        level = training_args.get_process_log_level()
        datasets.utils.logging.set_verbosity(max(level, logging.WARNING))
        transformers.utils.logging.set_verbosity(level)


def _is_complete_checkpoint(folder: Path) -> bool:
    try:
        json.loads((folder / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return False
    return True


def checkpoint_to_resume(training_args) -> str | None:
    """The checkpoint this run continues from: the recipe's `resume_from_checkpoint`, or else the newest
    complete checkpoint in `output_dir` (a run killed mid-save leaves a folder without a readable trainer state;
    such folders are removed so that nothing half-written is left behind)."""
    if training_args.resume_from_checkpoint:
        return training_args.resume_from_checkpoint
    output_dir = Path(training_args.output_dir)
    if not output_dir.is_dir():
        return None
    checkpoints = sorted(
        (p for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    for folder in reversed(checkpoints):
        if _is_complete_checkpoint(folder):
            logger.info("Resuming from %s", folder)
            return str(folder)
        if training_args.process_index == 0:
            logger.warning("Removing %s: it was cut off while being written.", folder)
            shutil.rmtree(folder, ignore_errors=True)
    return None


def last_logged(trainer, key: str, default=None):
    """The last value of `key` that the trainer logged. Summaries report it rather than this session's average, so
    that a resumed run reports the same number as an uninterrupted one."""
    return next((h[key] for h in reversed(trainer.state.log_history) if key in h), default)


def evaluate_held_out(trainer, keep=lambda key: True) -> dict:
    """Evaluate on the held-out sets after training and return the metrics that `keep` accepts, each beside its
    value before training as `<key>_before` (logged at step 0 by `eval_on_start`) where there is one. What
    callbacks log during the evaluation counts too. The metrics are also logged and saved (eval_results.json)."""
    history = trainer.state.log_history
    logged_before_evaluating = len(history)
    metrics = trainer.evaluate()
    for logged in history[logged_before_evaluating:]:
        metrics.update({key: value for key, value in logged.items() if key.startswith("eval_")})
    # A reward that scored none of the held-out prompts (another task's, in a mixture) has no mean: GRPOTrainer
    # gives None, which is not a measurement.
    metrics = {key: value for key, value in metrics.items() if value is not None}
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    results = {}
    for key in filter(keep, metrics):
        results[key] = metrics[key]
        before = [h[key] for h in history if key in h and h.get("step") == 0]
        if before:
            results[key + "_before"] = before[0]
    return results


def start(args: StageArguments, training_args) -> None:
    """What every training stage does first: logging, and the Hub settings checked before any compute."""
    from llm_recipes.hub import check_push_settings

    setup_logging(training_args)
    # Before any model is built: a model made from a config, a new value or classification head and LoRA weights
    # are initialised from this seed, so a rerun (or another number of processes) starts from the same weights.
    # Trainer seeds again when it is created, too late for those.
    transformers.set_seed(training_args.seed)
    check_push_settings(training_args.push_to_hub, args.hub_dry_run, training_args.hub_model_id)


# Training settings a model card lists, where the stage's config has them.
CARD_SETTINGS = ("learning_rate", "lr_scheduler_type", "max_steps", "num_train_epochs", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "world_size", "max_length", "beta", "loss_type", "kl_coef",
                 "num_generations", "num_ppo_epochs", "use_peft", "lora_r", "seed")


def finish(trainer, training_args, summary: dict, args: StageArguments | None = None,
           model_args=None) -> None:
    """Save the final model, its model card and metrics; push it to the Hub when asked (or write the dry run);
    then mark the stage complete, and leave the process group."""
    # Trainer's own push would write its own card; we push the finished folder ourselves (publish).
    trainer.save_model(training_args.output_dir, _internal_call=True)
    if trainer.is_world_process_zero():
        publish(trainer, training_args, summary, args, model_args)
    # Every process waits for the main one to finish writing, then leaves the process group (trackers finished).
    trainer.accelerator.wait_for_everyone()
    trainer.end()
    if training_args.world_size > 1:
        # A gloo worker thread may still be freeing the last collectives (this barrier holds the all-gathers
        # queued before it), which needs the GIL to free their Python tensors. Gloo's group is not joined on
        # destroy (its threads outlive it), and a thread that asks for the GIL once the interpreter is finalizing is
        # killed mid-destructor: "terminate called without an active exception", SIGABRT after a run that had
        # succeeded (1 exit in 15 of a 2-process GRPO run under load, backtrace from its core). Holding off the
        # exit with the GIL released lets the worker finish.
        time.sleep(EXIT_GRACE_SECONDS)


def publish(trainer, training_args, summary: dict, args: StageArguments | None, model_args) -> None:
    """The main process's part of `finish`: trainer state, model card, push or dry run, completion marker."""
    from llm_recipes.hub import push_folder, write_model_card

    output_dir = Path(training_args.output_dir)
    trainer.save_state()
    # Trainer pickles its arguments; a published folder should hold no pickles, so keep them as JSON.
    (output_dir / "training_args.bin").unlink(missing_ok=True)
    (output_dir / "training_args.json").write_text(training_args.to_json_string())
    args = args or StageArguments()
    # How the run was spread: a summary read later (or by a test) tells a 2-process run from a 1-process one.
    summary.setdefault("processes", training_args.world_size)
    summary.setdefault("global_batch_size", training_args.per_device_train_batch_size
                       * training_args.gradient_accumulation_steps * training_args.world_size)
    settings = {key: getattr(training_args, key, None) for key in CARD_SETTINGS}
    settings.update({key: getattr(model_args, key, None) for key in ("use_peft", "lora_r")})
    if not settings["use_peft"]:
        settings.pop("lora_r")
    if settings["max_steps"] and settings["max_steps"] > 0:
        settings.pop("num_train_epochs")
    recipe = args.recipe_file
    write_model_card(output_dir, stage=Path(recipe).stem if recipe else summary["stage"],
                     parent=getattr(model_args, "model_name_or_path", None), recipe=recipe, summary=summary,
                     details=settings, license=args.license, hub_model_id=training_args.hub_model_id)
    if training_args.push_to_hub or args.hub_dry_run:
        push_folder(output_dir, training_args.hub_model_id, revision=training_args.hub_revision,
                    private=training_args.hub_private_repo is not False, dry_run=args.hub_dry_run,
                    commit_message=f"{summary['stage']}: {Path(recipe).name if recipe else ''}".strip())
    mark_complete(output_dir, summary)


def run(main) -> None:
    """Run a stage's `main`, turning a recipe or dataset mistake into one clear line and exit status 2."""
    from llm_recipes.data import DatasetFormatError
    from llm_recipes.recipe import RecipeError

    try:
        main()
    except (RecipeError, DatasetFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
