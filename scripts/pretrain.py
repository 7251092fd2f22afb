"""Pretrain (or continue pretraining) a causal language model on packed text.

    accelerate launch scripts/pretrain.py --config recipes/tiny/pretrain.yaml
    accelerate launch --config_file accelerate_configs/zero2.yaml scripts/pretrain.py \
        --config recipes/<model>/pretrain.yaml

The model is built from the recipe's `model_config` (from scratch) or loaded from `model_name_or_path`
(continued pretraining). Documents are tokenized, joined with EOS and cut into full blocks of
`max_seq_length` tokens, so no step is spent on padding.
"""

import math
import time
from dataclasses import dataclass, field

from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments
from trl import ModelConfig

from llm_recipes import stage
from llm_recipes.data import DatasetMixture, build_mixture, check_declared_columns, tokenize_and_pack
from llm_recipes.evaluation import add_lm_eval_callback
from llm_recipes.model import (
    ceil_div,
    format_count,
    load_causal_lm,
    load_tokenizer,
    meta_model,
    training_memory_estimate,
)
from llm_recipes.recipe import RecipeError, RecipeParser


@dataclass
class PretrainArguments(stage.StageArguments):
    model_config: dict | None = field(
        default=None,
        metadata={"help": "Architecture of a model trained from scratch: `model_type` (llama, qwen3, ...) and that "
                  "family's config fields (hidden_size, num_hidden_layers, ...). Vocabulary size and special token "
                  "ids come from the tokenizer. Leave unset to start from `model_name_or_path`."},
    )
    model_config_overrides: dict | None = field(
        default=None,
        metadata={"help": "Config fields to change on the checkpoint of `model_name_or_path` before loading it, "
                  "e.g. {rope_parameters: {rope_type: yarn, factor: 4.0, ...}, max_position_embeddings: 512} "
                  "to extend the context window."},
    )
    max_seq_length: int = field(default=512, metadata={"help": "Tokens per training sequence."})
    packing: bool = field(
        default=True,
        metadata={"help": "Cut the token stream into full blocks of max_seq_length (no padding). Set false to keep "
                  "each document whole in its own sequence (truncated, padded), e.g. for long-context retrieval."},
    )
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes that tokenize and pack."})


# What a recipe of this stage may hold, and the columns its datasets need (the recipe test reads both).
ARGUMENTS = (PretrainArguments, ModelConfig, TrainingArguments)
DATASET_FORMAT = "text"


def main(argv=None):
    args, model_args, training_args = RecipeParser(ARGUMENTS).parse(argv)
    stage.start(args, training_args)
    mixture = DatasetMixture.from_recipe(args.dataset_mixture)
    check_declared_columns(mixture, DATASET_FORMAT)
    if mixture.streaming:
        raise RecipeError("dataset_mixture.streaming: pretraining packs a map-style dataset; download the data "
                          "(cap it with max_examples or max_tokens) instead of streaming it.")
    if not (model_args.model_name_or_path or args.model_config):
        raise RecipeError("Set model_name_or_path (continue from a checkpoint) or model_config (from scratch).")
    if args.model_config_overrides and not model_args.model_name_or_path:
        raise RecipeError("model_config_overrides changes a checkpoint's config; from scratch, set model_config.")
    tokenizer = load_tokenizer(args.tokenizer_name_or_path or model_args.model_name_or_path, args.trust_remote_code)
    # The model's shape, on the meta device: checks the architecture keys before any data is read.
    sized_model = meta_model(model_args.model_name_or_path, args.model_config, tokenizer, args.trust_remote_code,
                             config_overrides=args.model_config_overrides)

    # Counting tokens costs a tokenization pass, so only a token budget pays for it.
    count_tokens = (lambda ex: len(tokenizer(ex["text"])["input_ids"]) + 1) if mixture.max_tokens else None
    data, report = build_mixture(mixture, DATASET_FORMAT, count_tokens)
    stage.logger.info("Dataset mixture (%s examples):\n%s", f"{report.total_examples:,}", report.to_markdown())
    blocks = tokenize_and_pack(data, tokenizer, args.max_seq_length, args.dataset_num_proc, args.packing)
    held_out = {name: split for name, split in blocks.items() if name != "train"}

    tokens_per_step = (args.max_seq_length * training_args.per_device_train_batch_size
                       * training_args.gradient_accumulation_steps * training_args.world_size)
    steps_per_epoch = ceil_div(len(blocks["train"]) * args.max_seq_length, tokens_per_step)
    total_steps = training_args.max_steps if training_args.max_steps > 0 else math.ceil(
        steps_per_epoch * training_args.num_train_epochs)
    if args.dry_run:
        memory = training_memory_estimate(
            sized_model, training_args.per_device_train_batch_size, args.max_seq_length,
            bytes_per_param=2 if (training_args.bf16 or training_args.fp16) else 4,
        )
        print(f"parameters:              {format_count(memory['parameters'])}")
        print(f"memory per device:       {memory['total_gib']:.2f} GiB (weights {memory['weights_gib']:.2f}, "
              f"grads+AdamW {memory['grads_and_optimizer_gib']:.2f}, activations {memory['activations_gib']:.2f})")
        print(f"devices:                 {training_args.world_size}")
        print(f"tokens per optimizer step: {tokens_per_step:,}")
        print(f"training blocks:         {len(blocks['train']):,} of {args.max_seq_length} tokens")
        print(f"total steps:             {total_steps:,} ({total_steps * tokens_per_step:,} tokens)")
        return

    model = load_causal_lm(
        model_args.model_name_or_path, args.model_config, tokenizer, model_args.dtype,
        model_args.attn_implementation, args.trust_remote_code, model_args.model_revision,
        args.model_config_overrides,
    )
    stage.logger.info("Model: %s parameters", format_count(model.num_parameters()))
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=blocks["train"],
        # One held-out set is "eval_loss"; several are evaluated apart, as eval_<name>_loss.
        eval_dataset=held_out.get("test") if list(held_out) == ["test"] else (held_out or None),
        processing_class=tokenizer,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    add_lm_eval_callback(trainer, args)
    started = time.time()
    result = trainer.train(resume_from_checkpoint=stage.checkpoint_to_resume(training_args))
    summary = {
        "stage": "pretrain",
        "final_train_loss": stage.last_logged(trainer, "loss"),
        "train_tokens_per_second": result.metrics["train_samples_per_second"] * args.max_seq_length,
        "wall_seconds": time.time() - started,
        "parameters": model.num_parameters(),
        "mixture": report.rows,
    }
    if held_out:
        losses = stage.evaluate_held_out(trainer, keep=lambda key: key.endswith("_loss"))
        summary.update(losses)
        summary.update({key.replace("_loss", "_perplexity"): math.exp(loss) for key, loss in losses.items()})
    stage.finish(trainer, training_args, summary, args, model_args)


if __name__ == "__main__":
    stage.run(main)
