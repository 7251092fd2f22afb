"""Supervised fine-tuning: teach a pretrained model to answer in turns of a chat template, with TRL's SFTTrainer.

    accelerate launch scripts/sft.py --config recipes/tiny/sft.yaml
    accelerate launch --config_file accelerate_configs/single_gpu.yaml scripts/sft.py \
        --config recipes/qwen3-0.6b/sft_qlora.yaml

Data are conversations (`messages`, with `tools` where the assistant calls tools) or prompt/completion pairs. The
chat template is the tokenizer's, or the Jinja file `chat_template_path`. Before any compute is spent, the template
is checked so that the trained model will stop after its turn (see llm_recipes/chat_template.py); the usual fix is
`eos_token: "<|im_end|>"`, which makes the end-of-turn token the tokenizer's EOS and a stop token of the model's
generation config.

- `assistant_only_loss: true` trains on the assistant's tokens only (the template marks them with
  `{% generation %}`); prompt/completion data are trained on the completion only.
- `packing: true` packs conversations into sequences of `max_length` (best-fit, none split) and trains padding-free:
  one flattened row per batch, sequences told apart by their position ids. With flash attention that costs nothing;
  with sdpa or eager (CPU), Transformers builds a block-diagonal causal mask from the position ids: exact, but the
  attention of a batch costs (tokens in the batch)^2. Other attention implementations are refused with
  `padding_free`, since they would let packed conversations attend to each other.
- Full fine-tuning by default; `use_peft: true` trains a LoRA adapter (`lora_r`, `lora_alpha`, ...) and
  `load_in_4bit: true` adds 4-bit NF4 base weights (QLoRA, CUDA only). `neftune_noise_alpha` adds NEFTune noise.
"""

import time
from pathlib import Path

import torch
from transformers import AutoConfig, GenerationConfig
from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config, get_quantization_config
from trl.data_utils import is_conversational

from llm_recipes import stage
from llm_recipes.chat_template import check_chat_template, stop_token_ids
from llm_recipes.data import DatasetMixture, build_mixture, check_declared_columns
from llm_recipes.model import (
    fine_tuning_dry_run,
    format_count,
    load_causal_lm,
    load_tokenizer,
)
from llm_recipes.recipe import RecipeError, RecipeParser, repo_path

# Attention implementations that keep padding-free packed sequences apart: flash attention through the sequence
# boundaries, sdpa, eager and flex through the block-diagonal mask Transformers builds from the position ids.
PACKING_ATTENTION = ("flash_attention_2", "flash_attention_3", "sdpa", "eager", "flex_attention")


# What a recipe of this stage may hold, and the columns its datasets need (the recipe test reads both).
ARGUMENTS = (stage.StageArguments, ModelConfig, SFTConfig)
DATASET_FORMAT = "conversational"


def generation_config_of(model_name_or_path: str, revision: str | None, trust_remote_code: bool):
    """The generation config the model will load with, read without loading its weights."""
    try:
        return GenerationConfig.from_pretrained(model_name_or_path, revision=revision)
    except OSError:  # no generation_config.json: from_pretrained derives one from the model config
        config = AutoConfig.from_pretrained(model_name_or_path, revision=revision, trust_remote_code=trust_remote_code)
        return GenerationConfig.from_model_config(config)


def check_model_args(model_args: ModelConfig, training_args: SFTConfig) -> None:
    """Refuse what cannot run on this machine before anything is loaded."""
    if not model_args.model_name_or_path:
        raise RecipeError("Set model_name_or_path: SFT starts from a pretrained checkpoint.")
    if (model_args.load_in_4bit or model_args.load_in_8bit) and not model_args.use_peft:
        raise RecipeError("Quantized weights cannot be trained: with load_in_4bit or load_in_8bit, set "
                          "`use_peft: true` to train a LoRA adapter on them (QLoRA).")
    if model_args.load_in_4bit and (training_args.use_cpu or not torch.cuda.is_available()):
        raise RecipeError("load_in_4bit: 4-bit (QLoRA) training needs a CUDA GPU with bitsandbytes, and this run has "
                          "none. On a CPU, set `load_in_4bit: false` and train a LoRA adapter on full-precision "
                          "weights (`use_peft: true`).")
    padding_free = training_args.padding_free or (
        training_args.packing and training_args.packing_strategy in ("bfd", "bfd_split"))
    attention = model_args.attn_implementation
    if padding_free and attention is not None and attention not in PACKING_ATTENTION:
        raise RecipeError(
            f"attn_implementation: {attention!r} does not keep padding-free packed sequences apart (padding_free, "
            f"or packing with packing_strategy {training_args.packing_strategy!r}). Use one of "
            f"{', '.join(PACKING_ATTENTION)}, or set `padding_free: false` and `packing: false`."
        )


def main(argv=None):
    args, model_args, training_args = RecipeParser(ARGUMENTS).parse(argv)
    stage.start(args, training_args)
    mixture = DatasetMixture.from_recipe(args.dataset_mixture)
    check_declared_columns(mixture, DATASET_FORMAT)
    check_model_args(model_args, training_args)
    tokenizer = load_tokenizer(args.tokenizer_name_or_path or model_args.model_name_or_path, args.trust_remote_code)
    if training_args.chat_template_path:
        template = Path(repo_path(training_args.chat_template_path))
        if template.suffix not in (".jinja", ".j2") or not template.is_file():
            raise RecipeError(f"chat_template_path: expects a Jinja file (.jinja), got "
                              f"{training_args.chat_template_path!r}.")
        training_args.chat_template_path = str(template)  # SFTTrainer reads it again, from any working directory
        tokenizer.chat_template = template.read_text()

    data, report = build_mixture(mixture, DATASET_FORMAT)
    stage.logger.info("Dataset mixture (%s examples):\n%s", f"{report.total_examples:,}", report.to_markdown())
    conversational = is_conversational(data["train"][0])
    if training_args.assistant_only_loss and "messages" not in data["train"].column_names:
        raise RecipeError("assistant_only_loss applies to conversations (`messages`); prompt/completion data are "
                          "trained on the completion only already (completion_only_loss).")
    generation_config = generation_config_of(model_args.model_name_or_path, model_args.model_revision,
                                             args.trust_remote_code)
    end_of_turn = None
    if conversational:
        end_of_turn = check_chat_template(tokenizer, generation_config, training_args.assistant_only_loss,
                                          training_args.eos_token, training_args.pad_token)
        stage.logger.info("Chat template: an assistant turn ends with %s; generation stops on %s.", end_of_turn,
                          sorted(set(stop_token_ids(generation_config))
                                 | {tokenizer.convert_tokens_to_ids(training_args.eos_token or end_of_turn)}))
    held_out = {name: split for name, split in data.items() if name != "train"}
    peft_config = get_peft_config(model_args)

    if args.dry_run:
        packed = f"sequences of {training_args.max_length} packed tokens (fewer steps than below)"
        print(fine_tuning_dry_run(model_args, training_args, tokenizer, peft_config, args.trust_remote_code,
                                  len(data["train"]), "conversations",
                                  step_unit=packed if training_args.packing else None))
        return

    quantization_config = get_quantization_config(model_args)
    load_kwargs = {}
    if quantization_config is not None:
        load_kwargs = dict(quantization_config=quantization_config, device_map={"": training_args.local_process_index})
    model = load_causal_lm(
        model_args.model_name_or_path, None, tokenizer, model_args.dtype, model_args.attn_implementation,
        args.trust_remote_code, model_args.model_revision, **load_kwargs,
    )
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        # One held-out set is "eval_loss"; several are evaluated apart, as eval_<name>_loss.
        eval_dataset=held_out.get("test") if list(held_out) == ["test"] else (held_out or None),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    dropped = len(data["train"]) - len(trainer.train_dataset)
    if dropped and not training_args.packing:
        # SFTTrainer truncates to max_length and drops what has no trained token left, without a word.
        stage.logger.warning("%s of %s training examples were cut at max_length %s before any trained token and "
                             "are left out; raise max_length to keep them.", f"{dropped:,}",
                             f"{len(data['train']):,}", training_args.max_length)
    trainable, parameters = (trainer.model.get_nb_trainable_parameters() if peft_config is not None
                             else (model.num_parameters(),) * 2)
    stage.logger.info("Model: %s parameters, %s trained", format_count(parameters), format_count(trainable))
    started = time.time()
    result = trainer.train(resume_from_checkpoint=stage.checkpoint_to_resume(training_args))
    summary = {
        "stage": "sft",
        "final_train_loss": stage.last_logged(trainer, "loss"),
        # TRL counts the tokens this process trained on (padding excluded); the count starts again on resuming.
        "train_tokens_per_second": stage.last_logged(trainer, "num_tokens", 0) / result.metrics["train_runtime"],
        "train_steps_per_second": result.metrics["train_steps_per_second"],
        "wall_seconds": time.time() - started,
        "parameters": parameters,
        "trainable_parameters": trainable,
        "end_of_turn_token": end_of_turn,
        "stop_token_ids": stop_token_ids(trainer.model.generation_config),
        "mixture": report.rows,
    }
    if held_out:
        summary.update(stage.evaluate_held_out(trainer, keep=lambda k: k.endswith(("_loss", "_mean_token_accuracy"))))
    if peft_config is not None and trainer.is_world_process_zero():
        # The adapter folder holds no model config; keep the stop tokens beside it for whoever loads it.
        trainer.model.generation_config.save_pretrained(training_args.output_dir)
    stage.finish(trainer, training_args, summary, args, model_args)


if __name__ == "__main__":
    stage.run(main)
