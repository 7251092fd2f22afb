"""Supervised fine-tuning: teach a pretrained model to answer in turns of a chat template, with TRL's SFTTrainer.

    accelerate launch scripts/sft.py --config recipes/tiny/sft.yaml
    accelerate launch --config_file accelerate_configs/single_gpu.yaml scripts/sft.py \
        --config recipes/qwen3-0.6b/sft_qlora.yaml

Data are conversations (`messages`, with `tools` where the assistant calls tools) or prompt/completion pairs. Before
any compute is spent the chat template is checked, so that the trained model will stop after its turn
(llm_recipes/chat_template.py); the usual fix is `eos_token: "<|im_end|>"`. `assistant_only_loss: true` trains on
the assistant's tokens only; `packing: true` packs conversations padding-free (sequences kept apart by position ids:
flash attention, or on CPU sdpa's block-diagonal mask, which costs (tokens in the batch)^2). `use_peft: true` trains a
LoRA adapter, and `load_in_4bit: true` on 4-bit NF4 base weights (QLoRA, CUDA only).
"""

import llm_recipes  # noqa: F401, I001  first of all: it keeps known library start-up noise out of the log
from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config
from trl.data_utils import is_conversational

from llm_recipes import stage
from llm_recipes.chat_template import check_turn_ending, stop_token_ids, use_template_file
from llm_recipes.model import check_packing_attention, fine_tuning_dry_run, load_causal_lm, quantized_loading
from llm_recipes.recipe import RecipeError

# What a recipe of this stage may hold, and the columns its datasets need (the recipe test reads both).
ARGUMENTS = (stage.StageArguments, ModelConfig, SFTConfig)
DATASET_FORMAT = "conversational"
SPEC = stage.StageSpec("sft", ARGUMENTS, DATASET_FORMAT,
                       starts_from="a pretrained checkpoint", quantized_base=True)


def main(argv=None):
    run = stage.prepare(SPEC, argv, lambda run: check_packing_attention(run.model_args, run.training_args))
    model_args, training_args, train = run.model_args, run.training_args, run.data["train"]
    use_template_file(run.tokenizer, training_args)
    if training_args.assistant_only_loss and "messages" not in train.column_names:
        raise RecipeError("assistant_only_loss applies to conversations (`messages`); prompt/completion data are "
                          "trained on the completion only already (completion_only_loss).")
    end_of_turn = (check_turn_ending(run.tokenizer, model_args, training_args, run.args.trust_remote_code)
                   if is_conversational(train[0]) else None)
    peft_config = get_peft_config(model_args)
    if run.args.dry_run:
        packed = f"sequences of {training_args.max_length} packed tokens (fewer steps than below)"
        print(fine_tuning_dry_run(model_args, training_args, run.tokenizer, peft_config, run.args.trust_remote_code,
                                  len(train), "conversations", step_unit=packed if training_args.packing else None))
        return

    model = load_causal_lm(model_args, run.tokenizer, run.args.trust_remote_code,
                           **quantized_loading(model_args, training_args))
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=run.eval_dataset,
                         processing_class=run.tokenizer, peft_config=peft_config)
    dropped = len(train) - len(trainer.train_dataset)
    if dropped and not training_args.packing:
        # SFTTrainer truncates to max_length and drops what has no trained token left, without a word.
        stage.logger.warning("%s of %s training examples were cut at max_length %s before any trained token and "
                             "are left out; raise max_length to keep them.", f"{dropped:,}", f"{len(train):,}",
                             training_args.max_length)
    stage.train(trainer, run, keep=lambda key: key.endswith(("_loss", "_mean_token_accuracy")),
                summary=lambda result, evaluated: {
                    "end_of_turn_token": end_of_turn,
                    "stop_token_ids": stop_token_ids(trainer.model.generation_config)})


if __name__ == "__main__":
    stage.run(main)
