"""What every training stage checks before anything heavy loads: the values of the training arguments, the output
and resume folders, where the model comes from, sequence lengths against the model's positions (read from its
config, no weights), and the launch against the machine. Each check raises one `RecipeError` that names the key and
what to do; the stage skeleton (`stage.prepare`) runs them all, for every stage alike.

A configuration the machine cannot honour is refused, not downgraded: FSDP without a GPU, more processes than
devices, bf16 on a GPU without it, and a global batch that would change with the number of processes.
"""

import math
import os
from pathlib import Path

from llm_recipes.recipe import RecipeError


def check_training_values(training_args) -> None:
    """Ranges that Trainer would accept and act on strangely: a nan or negative learning rate, a batch of 0,
    `max_steps: 0` (one step, then a stage marked complete) or below -1 (three epochs)."""
    lr = training_args.learning_rate
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
        raise RecipeError(f"learning_rate: expects a finite number >= 0, got {lr!r}.")
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(training_args, key, 1) < 1:
            raise RecipeError(f"{key}: must be at least 1, got {getattr(training_args, key)}.")
    steps = training_args.max_steps
    if steps == 0 or steps < -1:
        raise RecipeError(f"max_steps: {steps} trains nothing sensible; give a positive number of steps, or -1 to "
                          "train `num_train_epochs` epochs.")
    if steps == -1 and not training_args.num_train_epochs > 0:
        raise RecipeError(f"num_train_epochs: must be > 0 when max_steps is -1, got {training_args.num_train_epochs}.")
    if not 0 <= training_args.warmup_steps:
        raise RecipeError(f"warmup_steps: must be >= 0, got {training_args.warmup_steps}.")


def check_output_dir(training_args) -> None:
    """The output folder is a folder (or can become one) that this user can write, and a named resume checkpoint
    exists, before any compute is spent."""
    output = Path(training_args.output_dir)
    if output.exists() and not output.is_dir():
        raise RecipeError(f"output_dir: {output} is a file, not a folder; point output_dir at a folder.")
    existing = next(p for p in (output, *output.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RecipeError(f"output_dir: {output} cannot be written ({existing} is not writable by this user).")
    resume = training_args.resume_from_checkpoint
    if resume and not Path(resume).is_dir():
        raise RecipeError(f"resume_from_checkpoint: no checkpoint folder at {resume}. Leave it unset to resume from "
                          "the newest complete checkpoint in output_dir.")


def is_local_path(name: str) -> bool:
    """Whether a model name is meant as a folder on this machine rather than a Hub id ("org/name")."""
    return (Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
            or (os.sep != "/" and os.sep in name))


def check_model_source(name: str | None, key: str, revision: str | None = None) -> None:
    """A local model folder exists; a Hub id can be reached, or is in the cache when the machine is offline."""
    if not name:
        return
    if is_local_path(name):
        if not Path(name).expanduser().is_dir():
            raise RecipeError(f"{key}: there is no folder {name}. Train the stage that writes it first (the "
                              "pipeline runs them in order), or give a Hub id such as Qwen/Qwen3-0.6B.")
        return
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and try_to_load_from_cache(name, "config.json", revision=revision) is None:
        raise RecipeError(f"{key}: {name} is a Hub id, and this machine is offline (HF_HUB_OFFLINE=1) with no copy "
                          "of it in the cache. Download it where the Hub is reachable (`hf download "
                          f"{name}`), or give a local folder.")


def model_positions(model_name_or_path, architecture: dict | None, overrides: dict | None,
                    trust_remote_code: bool) -> int | None:
    """How many positions the model will have, from its config alone (no weights), or None if it does not say."""
    overrides = overrides or {}
    if "max_position_embeddings" in overrides:
        return overrides["max_position_embeddings"]
    if architecture is not None:
        return architecture.get("max_position_embeddings")
    if not model_name_or_path:
        return None
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None  # check_model_source has named a missing model; a config it cannot read is not ours to judge
    return getattr(config.get_text_config(), "max_position_embeddings", None)


def _set_by_recipe(owner, key: str):
    """The value of `key` when it differs from its dataclass default (the recipe chose it), else None."""
    import dataclasses

    value = getattr(owner, key, None)
    default = next((f.default for f in dataclasses.fields(owner) if f.name == key), None)
    return value if isinstance(value, int) and value != default else None


def check_sequence_length(args, model_args, training_args) -> None:
    """Sequences that the recipe sets no longer than the model's positions: a longer one would train or generate on
    positions the model does not have. (A default, such as SFT's 1024, only truncates.)"""
    lengths = {key: _set_by_recipe(owner, key) for owner, key in
               ((args, "max_seq_length"), (training_args, "max_length"), (training_args, "max_completion_length"))}
    lengths = {key: value for key, value in lengths.items() if value is not None}
    if not lengths:
        return
    positions = model_positions(model_args.model_name_or_path, getattr(args, "model_config", None),
                                getattr(args, "model_config_overrides", None), args.trust_remote_code)
    for key, length in lengths.items():
        if positions and length > positions:
            raise RecipeError(f"{key}: {length} tokens, but the model has {positions} positions "
                              "(max_position_embeddings). Shorten the sequences, or extend the context first "
                              "(recipes/tiny/long_context.yaml does it with RoPE scaling).")


def check_launch(training_args, global_batch_size: int | None = None) -> None:
    """Refuse a launch this machine cannot honour, instead of running something else under the same name; and a
    recipe whose global batch would change with the number of processes it is launched on."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    on_cpu = training_args.use_cpu or gpus == 0
    # FSDP without a GPU is not FSDP: the processes run plain DDP under its name. DeepSpeed's CPU accelerator does
    # run ZeRO (tests/test_multi_process.py compares ZeRO-2 and ZeRO-3 on CPU with DDP), so it is not refused.
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true") or bool(training_args.fsdp)
    if fsdp and on_cpu:
        raise RecipeError("The launch asks for FSDP, which needs GPUs, and this run is on the CPU: it would run plain "
                          "data parallelism instead. Launch with accelerate_configs/cpu.yaml (one process) or "
                          "cpu_multi_process.yaml, or accelerate_configs/zero2.yaml for sharded optimizer states.")
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", training_args.world_size))
    devices = (os.cpu_count() or 1) if on_cpu else gpus
    if processes > devices:
        raise RecipeError(f"The launch starts {processes} processes on this machine, which has {devices} "
                          f"{'CPU cores' if on_cpu else 'GPUs'}; set num_processes to at most {devices} in the "
                          "accelerate config.")
    if training_args.world_size > 1 and global_batch_size is None:
        per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
        raise RecipeError(f"global_batch_size: this launch runs {training_args.world_size} processes, and the recipe "
                          f"does not set global_batch_size, so each would add its own batch ({per_step} per process): "
                          f"the run would train with a global batch {training_args.world_size} times the one it was "
                          "tuned with. Set global_batch_size, and gradient accumulation follows from it.")
    if (training_args.bf16 and not on_cpu and not torch.cuda.is_bf16_supported()):
        raise RecipeError("bf16: this GPU has no bfloat16 support; set `bf16: false` and `fp16: true`.")
