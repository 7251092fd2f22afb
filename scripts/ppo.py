"""PPO (RLHF): raise the reward of an SFT model's replies while a KL penalty keeps it near where it started.

    accelerate launch scripts/ppo.py --config recipes/tiny/ppo.yaml
    accelerate launch --config_file accelerate_configs/single_gpu.yaml scripts/ppo.py \
        --config recipes/qwen3-0.6b/ppo.yaml

Our own trainer (llm_recipes/ppo.py: TRL no longer ships one). The policy starts from `model_name_or_path` (the SFT
model); the reference is a frozen copy of it, or with `use_peft: true` the LoRA policy with its adapters disabled.
Replies are scored by `reward_funcs`, weighted by `reward_weights`: reward functions by name (llm_recipes/rewards.py,
the same ones GRPO uses) and/or reward models by path (the reward stage's output). The value model starts from
`value_model_path`, else the first reward model, else the policy's checkpoint with a new head; it reads the policy's
tokens, so it must share the policy's tokenizer.

Data are prompts (`prompt`, conversational or text) with the columns the reward functions read (`answer` for
answer_accuracy): list them under `columns:`. The held-out prompts are answered greedily before training
(`eval_on_start`) and after; the summary holds each reward's mean (answer accuracy included), the KL to the
reference, reply length, and where a PPO step's seconds went (generation, scoring, training).
"""

import time

import torch.nn as nn
from peft import get_peft_model
from transformers import AutoModelForSequenceClassification
from trl import ModelConfig, get_peft_config

from llm_recipes import stage
from llm_recipes.data import DatasetMixture, build_mixture, check_declared_columns
from llm_recipes.model import format_count, load_causal_lm, load_tokenizer, torch_dtype
from llm_recipes.pass_at_k import PassAtKArguments, add_pass_at_k_callback
from llm_recipes.ppo import PPOConfig, PPOTrainer
from llm_recipes.recipe import RecipeError, RecipeParser
from llm_recipes.rewards import REWARD_COLUMNS, is_reward_model

# What a recipe of this stage may hold, and the columns its datasets need (the recipe test reads both).
ARGUMENTS = (stage.StageArguments, PassAtKArguments, ModelConfig, PPOConfig)
DATASET_FORMAT = "prompt"
# Seconds of one PPO step (rollout, scoring, updates; evaluations and checkpoints apart) and of its parts, as the
# trainer logs them; the summary reports their means.
STEP_TIMINGS = {"seconds_per_step": "time/step", "seconds_per_step_generation": "time/generation",
                "seconds_per_step_scoring": "time/scoring", "seconds_per_step_training": "time/training"}


def check_recipe(args, model_args: ModelConfig, training_args: PPOConfig) -> None:
    """Refuse what this stage cannot do before anything is loaded."""
    if not model_args.model_name_or_path:
        raise RecipeError("Set model_name_or_path: PPO starts from a trained (usually SFT) policy.")
    if args.lm_eval_tasks:
        raise RecipeError("lm_eval_tasks: PPO evaluates its held-out prompts itself; run scripts/evaluate.py on the "
                          "output for lm-eval tasks.")
    if model_args.load_in_4bit or model_args.load_in_8bit:
        raise RecipeError("load_in_4bit / load_in_8bit: PPO here trains full-precision (or LoRA) weights only.")


def check_reward_columns(data, reward_funcs: list[str]) -> None:
    """Every column a reward function reads is in every split (listed under `columns:` in the recipe)."""
    for name in reward_funcs:
        column = REWARD_COLUMNS.get(name)
        for split, dataset in data.items():
            if column and column not in dataset.column_names:
                raise RecipeError(f"reward_funcs: '{name}' reads the column '{column}', which the {split} prompts "
                                  f"lack (they have {', '.join(dataset.column_names)}). List it under the datasets' "
                                  "`columns:` (or rename a column to it with `rename_columns:`).")


def main(argv=None):
    args, pass_args, model_args, training_args = RecipeParser(ARGUMENTS).parse(argv)
    stage.start(args, training_args)
    mixture = DatasetMixture.from_recipe(args.dataset_mixture)
    check_declared_columns(mixture, DATASET_FORMAT)
    check_recipe(args, model_args, training_args)
    tokenizer = load_tokenizer(args.tokenizer_name_or_path or model_args.model_name_or_path, args.trust_remote_code)
    data, report = build_mixture(mixture, DATASET_FORMAT)
    stage.logger.info("Dataset mixture (%s prompts):\n%s", f"{report.total_examples:,}", report.to_markdown())
    check_reward_columns(data, training_args.reward_funcs)
    held_out = [split for name, split in data.items() if name != "train"]
    if len(held_out) > 1:
        raise RecipeError("dataset_mixture.eval_datasets: PPO reports one held-out set; list its files as one list.")
    rollout = training_args.local_rollout_batch_size
    if args.dry_run:
        print(f"rollout batch per process:  {rollout} prompts "
              f"(per_device_train_batch_size x gradient_accumulation_steps x num_mini_batches)")
        print(f"optimizer steps per PPO step: {training_args.num_ppo_epochs * training_args.num_mini_batches}")
        print(f"devices:                    {training_args.world_size}")
        print(f"training prompts:           {len(data['train']):,}")
        print(f"PPO steps:                  {training_args.max_steps}")
        return

    def policy():
        return load_causal_lm(model_args.model_name_or_path, None, tokenizer, model_args.dtype,
                              model_args.attn_implementation, args.trust_remote_code, model_args.model_revision)

    model, ref_model = policy(), None
    peft_config = get_peft_config(model_args)
    if peft_config is not None:
        model = get_peft_model(model, peft_config)
    else:
        ref_model = policy()
    reward_models = [name for name in training_args.reward_funcs if is_reward_model(name)]
    value_path = training_args.value_model_path or (reward_models[0] if reward_models
                                                    else model_args.model_name_or_path)
    value_model, loading = AutoModelForSequenceClassification.from_pretrained(
        value_path, num_labels=1, dtype=torch_dtype(model_args.dtype), trust_remote_code=args.trust_remote_code,
        output_loading_info=True)
    if any(key.startswith("score.") for key in loading["missing_keys"]):
        # A new head starts at zero: every value is 0, so the first advantages are the whitened scores (REINFORCE
        # with the batch mean as baseline) instead of a random head's noise, which drowns a sparse reward.
        for parameter in value_model.score.parameters():
            nn.init.zeros_(parameter)
    if value_model.config.vocab_size < len(tokenizer):
        raise RecipeError(f"value_model_path: {value_path} has a vocabulary of {value_model.config.vocab_size} tokens, "
                          f"smaller than the policy's tokenizer ({len(tokenizer)}); the value model reads the "
                          "policy's tokens, so start it from a model with the policy's tokenizer.")
    value_model.config.pad_token_id = tokenizer.pad_token_id
    stage.logger.info("Value model from %s", value_path)

    trainer = PPOTrainer(
        args=training_args, processing_class=tokenizer, model=model, ref_model=ref_model, value_model=value_model,
        train_dataset=data["train"], eval_dataset=held_out[0] if held_out else None,
    )
    add_pass_at_k_callback(trainer, pass_args, held_out[0] if held_out else None, training_args.temperature,
                           training_args.max_completion_length, training_args.seed, policy_of=lambda m: m.policy)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    stage.logger.info("Policy and value model: %s parameters trained", format_count(trainable))
    started = time.time()
    trainer.train(resume_from_checkpoint=stage.checkpoint_to_resume(training_args))
    logged = trainer.state.log_history
    train_logs = [h for h in logged if "objective/kl" in h]
    summary = {
        "stage": "ppo",
        **{name: sum(h[key] for h in train_logs) / max(len(train_logs), 1) for name, key in STEP_TIMINGS.items()},
        # The last logged training values (a resumed run reports the same numbers).
        **{f"train_{key.replace('/', '_')}": train_logs[-1][key]
           for key in ("objective/kl", "objective/scores", "objective/entropy", "val/explained_variance")
           if train_logs},
        "train_kl_max": max((h["objective/kl"] for h in train_logs), default=None),
        "wall_seconds": time.time() - started,
        "trainable_parameters": trainable,
        "reward_funcs": training_args.reward_funcs,
        "mixture": report.rows,
    }
    if held_out:
        summary.update(stage.evaluate_held_out(trainer))  # before training (eval_on_start): the SFT parent
    stage.finish(trainer, training_args, summary, args, model_args)


if __name__ == "__main__":
    stage.run(main)
