"""Reward modeling: train a model to score a chosen reply above a rejected one, with TRL's RewardTrainer.

    accelerate launch scripts/reward.py --config recipes/tiny/reward.yaml
    accelerate launch --config_file accelerate_configs/single_gpu.yaml scripts/reward.py \
        --config recipes/qwen3-0.6b/reward.yaml

The causal LM checkpoint `model_name_or_path` (usually the SFT model) is loaded as
AutoModelForSequenceClassification with one label: its LM head is dropped and a new linear `score` head reads the
last non-padding token. The loss is Bradley-Terry, -log σ(r(chosen) - r(rejected)), less a `margin` column if the
data have one. Data are preference pairs (TRL's format: `prompt`, `chosen`, `rejected`, conversational or text).
`use_peft: true` trains LoRA adapters and the score head (`lora_task_type: SEQ_CLS`). The held-out pairs are scored
before training (the untrained head, `eval_on_start`) and after: pair accuracy per named set, margin and loss.
"""

import llm_recipes  # noqa: F401, I001  first of all: it keeps known library start-up noise out of the log
import datasets
from trl import ModelConfig, RewardConfig, RewardTrainer, get_peft_config, get_quantization_config

from llm_recipes import stage
from llm_recipes.data import align_features
from llm_recipes.model import fine_tuning_dry_run
from llm_recipes.preference_eval import PairAccuracyCallback
from llm_recipes.recipe import RecipeError

# What a recipe of this stage may hold, and the columns its datasets need (the recipe test reads both).
ARGUMENTS = (stage.StageArguments, ModelConfig, RewardConfig)
DATASET_FORMAT = "preference"
SPEC = stage.StageSpec("reward", ARGUMENTS, DATASET_FORMAT, examples="pairs",
                       starts_from="a pretrained (usually SFT) checkpoint", quantized_base=True,
                       no_lm_eval="a reward model scores text and generates none; evaluate the policy stages (SFT, "
                       "DPO, GRPO) with lm-eval instead.")
# Held-out measurements of the stage summary, as RewardTrainer names them, and each named held-out set's accuracy
# (PairAccuracyCallback); each also before training.
EVAL_METRICS = ("eval_loss", "eval_accuracy", "eval_margin", "eval_mean_reward")


def is_summarised(key: str) -> bool:
    return key in EVAL_METRICS or (key.startswith("eval_") and key.endswith("_pair_accuracy"))


def check_recipe(run: stage.Run) -> None:
    if run.model_args.use_peft and run.model_args.lora_task_type != "SEQ_CLS":
        raise RecipeError(f"lora_task_type: a LoRA reward model must train and save its new score head; set "
                          f"`lora_task_type: SEQ_CLS` (got {run.model_args.lora_task_type!r}).")


def main(argv=None):
    run = stage.prepare(SPEC, argv, check_recipe)
    model_args, training_args, named = run.model_args, run.training_args, run.held_out
    # Named held-out sets are scored together by RewardTrainer and one by one by PairAccuracyCallback.
    held_out = datasets.concatenate_datasets(align_features(list(named.values()))) if named else None
    peft_config = get_peft_config(model_args)
    if run.args.dry_run:
        print(fine_tuning_dry_run(model_args, training_args, run.tokenizer, peft_config, run.args.trust_remote_code,
                                  len(run.data["train"]), "pairs", sequences_per_example=2))
        return

    # RewardTrainer loads the checkpoint as a one-label sequence classifier (a new score head, the LM head dropped).
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision, "dtype": model_args.dtype,
        "attn_implementation": model_args.attn_implementation, "trust_remote_code": run.args.trust_remote_code,
        "use_safetensors": True, **(training_args.model_init_kwargs or {}),
    }
    trainer = RewardTrainer(model=model_args.model_name_or_path, args=training_args, train_dataset=run.data["train"],
                            eval_dataset=held_out, processing_class=run.tokenizer, peft_config=peft_config,
                            quantization_config=get_quantization_config(model_args))
    if len(named) > 1:
        trainer.add_callback(PairAccuracyCallback(trainer, named, training_args.max_length,
                                                  training_args.per_device_eval_batch_size))
    # Accuracy and margin are averaged over evaluation batches: exact over pairs when the batch size divides the
    # number of held-out pairs.
    stage.train(trainer, run, keep=is_summarised, summary=lambda result, evaluated: {
        "final_train_accuracy": stage.last_logged(trainer, "accuracy"),
        **({"eval_pairs": {name: len(split) for name, split in named.items()}} if named else {})})


if __name__ == "__main__":
    stage.run(main)
