"""Pretrain (or continue pretraining) a causal language model on packed text.

    accelerate launch scripts/pretrain.py --config recipes/tiny/pretrain.yaml
    accelerate launch --config_file accelerate_configs/zero2.yaml scripts/pretrain.py \
        --config recipes/<model>/pretrain.yaml

The model is built from the recipe's `model_config` (from scratch) or loaded from `model_name_or_path` (continued
pretraining). Documents are tokenized, joined with EOS and cut into full blocks of `max_seq_length` tokens.
A mixture-of-experts model (`model_type: qwen3_moe`, ...) trains the same way; its router's load-balancing loss and
each expert's share of tokens are logged (llm_recipes/moe.py).
"""

import llm_recipes  # noqa: F401, I001  first of all: it keeps known library start-up noise out of the log
import math
from dataclasses import dataclass, field

from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments
from trl import ModelConfig

from llm_recipes import stage
from llm_recipes.data import tokenize_and_pack
from llm_recipes.model import load_causal_lm, meta_model, pretraining_dry_run
from llm_recipes.moe import add_router_stats
from llm_recipes.recipe import RecipeError


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
    packing: bool = field(default=True, metadata={"help": "Cut the token stream into full blocks of max_seq_length "
                          "(no padding). Set false to keep each document whole in its own sequence (truncated, "
                          "padded), e.g. for long-context retrieval."})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes that tokenize and pack."})


# What a recipe of this stage may hold, and the columns its datasets need (the recipe test reads both).
ARGUMENTS = (PretrainArguments, ModelConfig, TrainingArguments)
DATASET_FORMAT = "text"
SPEC = stage.StageSpec("pretrain", ARGUMENTS, DATASET_FORMAT, streaming=False)


def sized_model(run: stage.Run):
    """The model's shape on the meta device: checks the architecture keys before any data is read."""
    args, model_args = run.args, run.model_args
    if not (model_args.model_name_or_path or args.model_config):
        raise RecipeError("Set model_name_or_path (continue from a checkpoint) or model_config (from scratch).")
    if args.model_config_overrides and not model_args.model_name_or_path:
        raise RecipeError("model_config_overrides changes a checkpoint's config; from scratch, set model_config.")
    return meta_model(model_args, run.tokenizer, args.trust_remote_code, args.model_config, args.model_config_overrides)


def main(argv=None):
    run = stage.prepare(SPEC, argv, sized_model,
                        count_tokens=lambda tokenizer: lambda ex: len(tokenizer(ex["text"])["input_ids"]) + 1)
    args, model_args, training_args, tokenizer = run.args, run.model_args, run.training_args, run.tokenizer
    run.data = tokenize_and_pack(run.data, tokenizer, args.max_seq_length, args.dataset_num_proc, args.packing)
    if args.dry_run:
        print(pretraining_dry_run(sized_model(run), training_args, args.max_seq_length, len(run.data["train"])))
        return

    model = load_causal_lm(model_args, tokenizer, args.trust_remote_code, args.model_config,
                           args.model_config_overrides)
    trainer = Trainer(model=model, args=training_args, train_dataset=run.data["train"], eval_dataset=run.eval_dataset,
                      processing_class=tokenizer, data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    router = add_router_stats(trainer)
    stage.train(trainer, run, keep=lambda key: key.endswith("_loss"), summary=lambda result, evaluated: {
        "train_tokens_per_second": result.metrics["train_samples_per_second"] * args.max_seq_length,
        **{key.replace("_loss", "_perplexity"): math.exp(loss) for key, loss in evaluated.items()},
        **({"final_moe_aux_loss": stage.last_logged(trainer, "moe_aux_loss"), **router.summary()} if router else {})})


if __name__ == "__main__":
    stage.run(main)
