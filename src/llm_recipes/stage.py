"""The stage skeleton: what every training stage does around its own work, in order. `prepare` parses and checks
the recipe (and, through llm_recipes/preflight.py, the machine), builds the data and loads the tokenizer; the
script builds its trainer; `train` resumes, trains, evaluates and finishes; `run` turns a user's mistake into one
line. A `StageSpec` beside each script declares what it supports, and the skeleton enforces it.

alignment-handbook repeats these lines in every script; we write them once. A stage's output folder is complete
only when `stage_complete.json` is in it, written last and atomically, so the pipeline runner (and a user) can
tell a finished stage from one that was cut off.
"""

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_recipes import preflight
from llm_recipes.atomic_files import write_json_atomic  # noqa: F401 (stage.write_json_atomic, for the scripts)

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
                  "{path, data_files, split, columns, rename_columns, where, weight}), and optionally `eval_datasets`, "
                  "`test_split_size`, `max_examples`, `max_tokens`, `seed`. See README."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Tokenizer to use; defaults to the model's own (`model_name_or_path`)."},
    )
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Run modelling code shipped with a Hub checkpoint. Off unless a recipe turns it on."})
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
    if training_args is not None:  # a training stage (stages without a trainer do not import Transformers)
        import datasets
        import transformers

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
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

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
    import transformers

    from llm_recipes.hub import check_push_settings

    setup_logging(training_args)
    # Before any model is built: a model made from a config, a new value or classification head and LoRA weights
    # are initialised from this seed, so a rerun (or another number of processes) starts from the same weights.
    # Trainer seeds again when it is created, too late for those.
    transformers.set_seed(training_args.seed)
    check_push_settings(training_args.push_to_hub, args.hub_dry_run, training_args.hub_model_id)


@dataclass(frozen=True)
class StageSpec:
    """What a training stage is and what it supports, declared once beside its script; `prepare` and `train`
    enforce it, so a recipe key that a stage cannot honour is refused instead of ignored."""

    name: str
    arguments: tuple  # the dataclasses a recipe fills: StageArguments (or a subclass) first, the trainer's config last
    dataset_format: str  # the columns its datasets need (llm_recipes.data.check_format)
    examples: str = "examples"  # what one training row is, in logs and the dry run: pairs, prompts, ...
    starts_from: str | None = None  # the checkpoint `model_name_or_path` must name; None: optional
    named_eval_sets: bool = True  # several held-out sets, each evaluated apart (eval_<name>_...); else one set
    no_lm_eval: str | None = None  # why the stage refuses `lm_eval_tasks`; None: scored at every evaluation
    quantized_base: bool = False  # LoRA on 4- or 8-bit weights (QLoRA) is supported
    streaming: bool = True  # a streamed (iterable) mixture is supported


@dataclass
class Run:
    """A stage's parsed and checked recipe, its data and its tokenizer: what `prepare` hands the script."""

    spec: StageSpec
    parsed: tuple  # one instance per dataclass of spec.arguments, in order
    mixture: Any = None
    data: Any = None  # the DatasetDict: "train" and the held-out sets
    report: Any = None  # the mixture's MixtureReport
    tokenizer: Any = None

    @property
    def args(self) -> StageArguments:
        return self.parsed[0]

    @property
    def training_args(self):
        return self.parsed[-1]

    @property
    def model_args(self):
        from trl import ModelConfig

        return self.of(ModelConfig)

    def of(self, kind: type):
        """The parsed instance of the dataclass `kind` (e.g. PassAtKArguments)."""
        return next(instance for instance in self.parsed if isinstance(instance, kind))

    @property
    def held_out(self) -> dict:
        """The held-out sets by name: "test" alone for a list of eval_datasets or a test split."""
        return {name: split for name, split in self.data.items() if name != "train"}

    @property
    def eval_dataset(self):
        """The held-out sets as a Trainer takes them: one set (reported as eval_loss), several by name
        (eval_<name>_loss), or None."""
        held_out = self.held_out
        return held_out.get("test") if list(held_out) == ["test"] else (held_out or None)


def check_supported(spec: StageSpec, args: StageArguments, mixture, model_args, training_args) -> None:
    """Refuse the recipe keys this stage cannot honour, before anything is loaded."""
    from llm_recipes.model import check_quantization
    from llm_recipes.recipe import RecipeError

    if spec.starts_from and not model_args.model_name_or_path:
        raise RecipeError(f"Set model_name_or_path: {spec.name} starts from {spec.starts_from}.")
    if spec.no_lm_eval and args.lm_eval_tasks:
        raise RecipeError(f"lm_eval_tasks: {spec.no_lm_eval}")
    if not spec.named_eval_sets and isinstance(mixture.eval_datasets, dict):
        raise RecipeError(f"dataset_mixture.eval_datasets: {spec.name} reports one held-out set; give its files as "
                          "one list, not a mapping of named sets.")
    if not spec.streaming and mixture.streaming:
        raise RecipeError(f"dataset_mixture.streaming: {spec.name} needs a map-style dataset; download the data "
                          "(cap it with max_examples or max_tokens) instead of streaming it.")
    check_quantization(model_args, training_args, spec.name, spec.quantized_base)
    preflight.check_training_values(training_args)
    preflight.check_output_dir(training_args)
    preflight.check_launch(training_args, args.global_batch_size)


def prepare(spec: StageSpec, argv=None, check=None, count_tokens=None) -> Run:
    """The first half of every training stage: parse and check the recipe, seed, build the dataset mixture (logging
    it) and load the tokenizer. `check(run)` is the stage's own recipe checks, run before any data or tokenizer is
    read (`run.tokenizer` is None then). `count_tokens(tokenizer)` gives the per-example token counter that a
    `max_tokens` budget needs; only a budget pays for the tokenization pass that counting costs."""
    from llm_recipes.data import DatasetMixture, build_mixture, check_declared_columns
    from llm_recipes.recipe import RecipeParser

    run = Run(spec, RecipeParser(spec.arguments).parse(argv))
    start(run.args, run.training_args)
    run.mixture = DatasetMixture.from_recipe(run.args.dataset_mixture)
    check_declared_columns(run.mixture, spec.dataset_format)
    check_supported(spec, run.args, run.mixture, run.model_args, run.training_args)
    if check is not None:
        check(run)
    counter = None
    if count_tokens and run.mixture.max_tokens:
        run.tokenizer = tokenizer_of(run)
        counter = count_tokens(run.tokenizer)
    run.data, run.report = build_mixture(run.mixture, spec.dataset_format, counter)
    logger.info("Dataset mixture (%s %s):\n%s", f"{run.report.total_examples:,}", spec.examples,
                run.report.to_markdown())
    # After the data (a data error is named first), before any weights: where the model comes from, its length.
    if run.tokenizer is None:
        run.tokenizer = tokenizer_of(run)
    preflight.check_sequence_length(run.args, run.model_args, run.training_args)
    return run


def tokenizer_of(run: Run):
    """The recipe's tokenizer: `tokenizer_name_or_path`, else the model's own."""
    from llm_recipes.model import load_tokenizer

    args, model_args = run.args, run.model_args
    preflight.check_model_source(args.tokenizer_name_or_path, "tokenizer_name_or_path")
    preflight.check_model_source(model_args.model_name_or_path, "model_name_or_path", model_args.model_revision)
    # A tokenizer of its own (tokenizer_name_or_path) is another repository: the model's revision is not its own.
    return load_tokenizer(args.tokenizer_name_or_path or model_args.model_name_or_path, args.trust_remote_code,
                          None if args.tokenizer_name_or_path else model_args.model_revision)


def trainable_parameters(trainer) -> tuple[int, int]:
    """(trained, all) parameters of the trainer's model: under LoRA the adapters are the trained ones."""
    model = trainer.model
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    return sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters())


def peak_memory() -> dict:
    """The process's peak memory so far: resident (RSS) always, and the accelerator's allocated peak on CUDA."""
    import resource

    import torch

    peak = {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}  # KiB on Linux
    if torch.cuda.is_available():
        peak["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return peak


def train(trainer, run: Run, summary=lambda result, evaluated: {}, keep=lambda key: True) -> None:
    """The second half of every training stage: lm-eval during training when asked, resume from the newest
    complete checkpoint, train, evaluate on the held-out sets (each metric beside its value before training), then
    `finish`. The stage summary holds what every stage reports, then `summary(result, evaluated)`: the stage's own
    keys, given Trainer's TrainOutput and the held-out metrics that `keep` accepts."""
    from llm_recipes.evaluation import add_lm_eval_callback

    args, training_args = run.args, run.training_args
    if not run.spec.no_lm_eval:
        add_lm_eval_callback(trainer, args)
    trained, parameters = trainable_parameters(trainer)
    logger.info("Model: %s parameters, %s trained", f"{parameters:,}", f"{trained:,}")
    started = time.time()
    result = trainer.train(resume_from_checkpoint=checkpoint_to_resume(training_args))
    metrics = getattr(result, "metrics", {})
    base = {
        "stage": run.spec.name,
        "final_train_loss": last_logged(trainer, "loss"),
        "train_steps_per_second": metrics.get("train_steps_per_second"),
        # TRL's trainers count the tokens this process trained on, padding excluded (again on resuming).
        "train_tokens_per_second": (tokens / metrics["train_runtime"]
                                    if (tokens := last_logged(trainer, "num_tokens")) and metrics else None),
        "wall_seconds": time.time() - started,
        "parameters": parameters,
        "trainable_parameters": trained,
        **peak_memory(),
        "mixture": run.report.rows,
    }
    report = {key: value for key, value in base.items() if value is not None}  # what this stage does not log
    evaluated = evaluate_held_out(trainer, keep) if run.held_out else {}
    report.update(summary(result, evaluated))
    report.update(evaluated)
    finish(trainer, training_args, report, args, run.model_args)


# Training settings a model card lists, where the stage's config has them.
CARD_SETTINGS = ("learning_rate", "lr_scheduler_type", "max_steps", "num_train_epochs", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "world_size", "max_length", "beta", "loss_type", "kl_coef",
                 "num_generations", "num_ppo_epochs", "use_peft", "lora_r", "seed")


def finish(trainer, training_args, summary: dict, args: StageArguments | None = None,
           model_args=None) -> None:
    """Save the final model, its model card and metrics; push it to the Hub when asked (or write the dry run);
    then mark the stage complete, and leave the process group."""
    # The router's load-balancing loss is a training setting: published mixtures of experts (Qwen3-MoE, Mixtral)
    # are saved with it off, and Transformers' generation fails with it on (the loss meets the mask of the whole
    # sequence with the router logits of the new token only). A stage that trains the checkpoint again turns it on
    # with `model_config_overrides: {output_router_logits: true}`.
    config = getattr(trainer.model, "config", None)  # PPO's policy-and-value wrapper has none (nor a router)
    if config is not None and getattr(config.get_text_config(), "output_router_logits", False):
        config.get_text_config().output_router_logits = False
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
    if hasattr(trainer.model, "peft_config") and getattr(trainer.model, "generation_config", None) is not None:
        # An adapter folder holds no model config; keep the stop tokens beside it for whoever loads it.
        trainer.model.generation_config.save_pretrained(output_dir)
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
    """Run a stage's `main`, turning a user's mistake into one clear line and exit status 2 (a recipe, a dataset)
    or 1 (a full disk), without a traceback; `LLM_RECIPES_DEBUG=1` shows the traceback as well."""
    import errno

    from llm_recipes.data import DatasetFormatError
    from llm_recipes.recipe import RecipeError

    try:
        main()
    except (RecipeError, DatasetFormatError) as e:
        if os.environ.get("LLM_RECIPES_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno != errno.ENOSPC or os.environ.get("LLM_RECIPES_DEBUG"):
            raise
        # The checkpoint being written is left without its trainer state, so it is never resumed from; the last
        # complete one stays as it was.
        print(f"error: the disk is full: writing {e.filename or 'a file'} failed. Free space there (or point "
              "output_dir elsewhere) and rerun the same command: it resumes from the last complete checkpoint.",
              file=sys.stderr)
        sys.exit(1)
