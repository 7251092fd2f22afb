"""Tokenizers and causal language models: loading them, building them from a recipe's config, sizing them."""

import logging
import math

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from llm_recipes.recipe import RecipeError, unknown_key_message

logger = logging.getLogger(__name__)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, revision: str | None = None):
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    if tokenizer.pad_token is None:
        raise RecipeError(
            f"The tokenizer at {name_or_path} has no pad token. Set one that differs from EOS in the tokenizer "
            "(e.g. `tokenizer.add_special_tokens({'pad_token': '<|pad|>'})`) before training."
        )
    return tokenizer


def model_config_from_recipe(
    architecture: dict, tokenizer: PreTrainedTokenizerBase | None, trust_remote_code: bool = False
):
    """A Transformers config for a model trained from scratch, from the recipe's `model_config:` mapping.

    `model_type` picks the family (llama, qwen3, ...); every other key is that family's config field. The
    vocabulary and special token ids always come from the tokenizer, so the two cannot disagree (without a
    tokenizer, only the keys are checked).
    """
    architecture = dict(architecture)
    model_type = architecture.pop("model_type", None)
    if not model_type:
        raise RecipeError("model_config: needs a 'model_type' (e.g. llama or qwen3).")
    try:
        config = AutoConfig.for_model(model_type, trust_remote_code=trust_remote_code)
    except ValueError as e:
        raise RecipeError(f"model_config.model_type: unknown architecture {model_type!r} ({e}).") from e
    check_config_keys(config, architecture, "model_config")
    if tokenizer is None:
        return config
    architecture.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return AutoConfig.for_model(model_type, **architecture)


# Config keys that choose a kernel rather than an architecture field: a mixture of experts' expert computation
# (eager, batched_mm, grouped_mm; llm_recipes/moe.py).
KERNEL_KEYS = {"experts_implementation"}


def check_config_keys(config, keys, where: str) -> None:
    """Name the first of `keys` that `config`'s architecture does not have, with its closest valid key."""
    valid = set(config.to_dict()) | set(getattr(config, "attribute_map", {})) | KERNEL_KEYS
    for key in keys:
        if key not in valid and not hasattr(config, key):
            raise RecipeError(unknown_key_message(
                key, sorted(valid), f"{where} ({config.model_type})",
                help_hint=f"Valid keys are the fields of {type(config).__name__}.",
            ))


def apply_config_overrides(config, overrides: dict) -> None:
    """Set fields of a loaded config, naming any key the architecture does not have."""
    check_config_keys(config, overrides, "model_config_overrides")
    for key, value in overrides.items():
        setattr(config, key, value)
    if hasattr(config, "validate_rope") and "rope_parameters" in overrides:
        config.validate_rope()


def torch_dtype(name: str | None):
    if name in (None, "auto"):
        return name
    if not hasattr(torch, name):
        raise RecipeError(f"dtype: unknown torch dtype {name!r} (use float32, bfloat16, float16 or auto).")
    return getattr(torch, name)


def check_quantization(model_args, training_args, stage: str, supported: bool) -> None:
    """Refuse 4- or 8-bit base weights where they cannot train: in a stage without QLoRA, without LoRA adapters to
    train on them, or (4-bit) without a CUDA GPU. Checked before anything is loaded."""
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return
    if not supported:
        raise RecipeError(f"load_in_4bit / load_in_8bit: {stage} here trains full-precision (or LoRA) weights only.")
    if not model_args.use_peft:
        raise RecipeError("Quantized weights cannot be trained: with load_in_4bit or load_in_8bit, set "
                          "`use_peft: true` to train a LoRA adapter on them (QLoRA).")
    if model_args.load_in_4bit and (training_args.use_cpu or not torch.cuda.is_available()):
        raise RecipeError("load_in_4bit: 4-bit (QLoRA) training needs a CUDA GPU with bitsandbytes, and this run has "
                          "none. On a CPU, set `load_in_4bit: false` and train a LoRA adapter on full-precision "
                          "weights (`use_peft: true`).")


# Attention implementations that keep padding-free packed sequences apart: flash attention through the sequence
# boundaries, sdpa, eager and flex through the block-diagonal mask Transformers builds from the position ids.
PACKING_ATTENTION = ("flash_attention_2", "flash_attention_3", "sdpa", "eager", "flex_attention")


def check_packing_attention(model_args, training_args) -> None:
    """Refuse an attention implementation that would let padding-free packed sequences attend to each other."""
    padding_free = training_args.padding_free or (
        training_args.packing and training_args.packing_strategy in ("bfd", "bfd_split"))
    attention = model_args.attn_implementation
    if padding_free and attention is not None and attention not in PACKING_ATTENTION:
        raise RecipeError(
            f"attn_implementation: {attention!r} does not keep padding-free packed sequences apart (padding_free, "
            f"or packing with packing_strategy {training_args.packing_strategy!r}). Use one of "
            f"{', '.join(PACKING_ATTENTION)}, or set `padding_free: false` and `packing: false`."
        )


def quantized_loading(model_args, training_args) -> dict:
    """`from_pretrained` keyword arguments for the recipe's 4- or 8-bit base weights (none without them): each
    process loads its copy onto its own device."""
    from trl import get_quantization_config

    quantization_config = get_quantization_config(model_args)
    if quantization_config is None:
        return {}
    return dict(quantization_config=quantization_config, device_map={"": training_args.local_process_index})


def load_causal_lm(model_args, tokenizer: PreTrainedTokenizerBase, trust_remote_code: bool = False,
                   architecture: dict | None = None, config_overrides: dict | None = None, **load_kwargs):
    """The recipe's causal LM, from its `ModelConfig` (checkpoint, revision, dtype, attention implementation):
    loaded from `model_name_or_path`, or built fresh from `architecture` (pretraining).

    `config_overrides` changes fields of a checkpoint's config before its weights are loaded, e.g. RoPE scaling
    and `max_position_embeddings` to extend the context window. `load_kwargs` go to `from_pretrained`
    (`quantization_config`, `device_map`: see `quantized_loading`).
    """
    model_name_or_path, revision = model_args.model_name_or_path, model_args.model_revision
    dtype, attn_implementation = model_args.dtype, model_args.attn_implementation
    if model_name_or_path:
        config = AutoConfig.from_pretrained(model_name_or_path, revision=revision, trust_remote_code=trust_remote_code)
        apply_config_overrides(config, config_overrides or {})
        return AutoModelForCausalLM.from_pretrained(
            model_name_or_path,
            config=config,
            revision=revision,
            dtype=torch_dtype(dtype),
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            **load_kwargs,
        )
    if load_kwargs:
        raise RecipeError(f"{', '.join(load_kwargs)}: only for a model loaded from model_name_or_path.")
    if not architecture:
        raise RecipeError("Set either model_name_or_path (start from a checkpoint) or model_config (from scratch).")
    config = model_config_from_recipe(architecture, tokenizer, trust_remote_code)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    if dtype not in (None, "auto"):
        model = model.to(torch_dtype(dtype))
    return model


def meta_model(model_args, tokenizer, trust_remote_code: bool = False, architecture: dict | None = None,
               config_overrides: dict | None = None):
    """The model's structure with no weights allocated, to size a run before spending any memory on it."""
    model_name_or_path, revision = model_args.model_name_or_path, model_args.model_revision
    if model_name_or_path:
        config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code, revision=revision)
        apply_config_overrides(config, config_overrides or {})
    else:
        config = model_config_from_recipe(architecture or {}, tokenizer, trust_remote_code)
    # Under DeepSpeed ZeRO-3, from_config would partition and initialise the weights (zero.Init), which fails on
    # the meta device; the shape needs neither, so the ZeRO-3 config is set aside while the shape is built.
    from transformers.integrations import deepspeed as hf_deepspeed

    zero3_config = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = zero3_config


def training_memory_estimate(
    model, batch_size: int, seq_length: int, bytes_per_param: int = 4, trainable_fraction: float = 1.0
) -> dict[str, float]:
    """Rough per-device memory (GiB) of full training with AdamW and plain data parallelism.

    Weights in the training dtype, fp32 gradients and two fp32 Adam moments for trainable parameters, and
    activations of about 34·s·b·h bytes per layer (Korthikanti et al., 2022, without recomputation), plus the
    fp32 logits, which dominate for small models with large vocabularies.
    """
    params = sum(p.numel() for p in model.parameters())
    trainable = params * trainable_fraction
    cfg = model.config
    hidden = getattr(cfg, "hidden_size", 0)
    layers = getattr(cfg, "num_hidden_layers", 0)
    vocab = getattr(cfg, "vocab_size", 0)
    gib = 1024**3
    weights = params * bytes_per_param / gib
    grads_and_optimizer = trainable * (4 + 8) / gib
    activations = (34 * seq_length * batch_size * hidden * layers + 4 * 2 * seq_length * batch_size * vocab) / gib
    return dict(
        parameters=params,
        weights_gib=weights,
        grads_and_optimizer_gib=grads_and_optimizer,
        activations_gib=activations,
        total_gib=weights + grads_and_optimizer + activations,
    )


def format_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / max(b, 1))


def fine_tuning_dry_run(model_args, training_args, tokenizer, peft_config, trust_remote_code: bool,
                        train_examples: int, examples: str, sequences_per_example: int = 1,
                        keeps_reference: bool = False, step_unit: str | None = None) -> str:
    """What `--dry_run` prints for a stage that fine-tunes a checkpoint (SFT, reward, DPO): parameters (trained
    ones under LoRA), memory per device, the batch and the number of steps, from the model's structure on the meta
    device. `sequences_per_example` is 2 for preference pairs (chosen and rejected); `keeps_reference` adds a
    frozen copy of the weights."""
    model = meta_model(model_args, tokenizer, trust_remote_code)
    parameters = trainable = model.num_parameters()
    if peft_config is not None:
        from peft import get_peft_model

        trainable, parameters = get_peft_model(model, peft_config).get_nb_trainable_parameters()
    bytes_per_param = 0.5 if model_args.load_in_4bit else 2 if (training_args.bf16 or training_args.fp16) else 4
    memory = training_memory_estimate(
        model, sequences_per_example * training_args.per_device_train_batch_size, training_args.max_length or 1024,
        bytes_per_param=bytes_per_param, trainable_fraction=trainable / parameters,
    )
    reference_gib = parameters * bytes_per_param / 1024**3 if keeps_reference else 0.0
    per_step = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                * training_args.world_size)
    steps = training_args.max_steps if training_args.max_steps > 0 else math.ceil(
        ceil_div(train_examples, per_step) * training_args.num_train_epochs)
    reference = f", reference {reference_gib:.2f}" if keeps_reference else ""
    return "\n".join([
        f"parameters:              {format_count(parameters)} ({format_count(trainable)} trained)",
        f"memory per device:       {memory['total_gib'] + reference_gib:.2f} GiB (weights {memory['weights_gib']:.2f}"
        f"{reference}, grads+AdamW {memory['grads_and_optimizer_gib']:.2f}, activations "
        f"{memory['activations_gib']:.2f})",
        f"devices:                 {training_args.world_size}",
        f"training {examples}:{' ' * max(1, 15 - len(examples))}{train_examples:,}",
        f"per optimizer step:      {per_step:,} {step_unit or examples}",
        f"total steps:             {steps:,}",
    ])


def pretraining_dry_run(model, training_args, seq_length: int, train_blocks: int) -> str:
    """What `--dry_run` prints for pretraining: parameters, memory per device, tokens per step and total steps, from
    the model's structure on the meta device and the number of packed training blocks."""
    memory = training_memory_estimate(model, training_args.per_device_train_batch_size, seq_length,
                                      bytes_per_param=2 if (training_args.bf16 or training_args.fp16) else 4)
    tokens_per_step = (seq_length * training_args.per_device_train_batch_size
                       * training_args.gradient_accumulation_steps * training_args.world_size)
    steps = training_args.max_steps if training_args.max_steps > 0 else math.ceil(
        ceil_div(train_blocks * seq_length, tokens_per_step) * training_args.num_train_epochs)
    return "\n".join([
        f"parameters:              {format_count(memory['parameters'])}",
        f"memory per device:       {memory['total_gib']:.2f} GiB (weights {memory['weights_gib']:.2f}, "
        f"grads+AdamW {memory['grads_and_optimizer_gib']:.2f}, activations {memory['activations_gib']:.2f})",
        f"devices:                 {training_args.world_size}",
        f"tokens per optimizer step: {tokens_per_step:,}",
        f"training blocks:         {train_blocks:,} of {seq_length} tokens",
        f"total steps:             {steps:,} ({steps * tokens_per_step:,} tokens)",
    ])
