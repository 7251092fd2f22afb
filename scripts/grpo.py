"""GRPO on verifiable rewards: sample a group of answers per prompt, score them with reward functions, and move
the policy towards the answers that beat their group's mean (DeepSeekMath, DeepSeek-R1), with TRL's GRPOTrainer.

    accelerate launch scripts/grpo.py --config recipes/tiny/grpo.yaml
    accelerate launch --config_file accelerate_configs/zero2.yaml scripts/grpo.py \
        --config recipes/qwen3-0.6b/grpo.yaml

Prompts are conversational (`prompt`) or plain; every other column reaches the reward functions by its name
(`answer` for `answer_accuracy`). `reward_funcs` names functions of llm_recipes/rewards.py (or a reward model's
folder or Hub id) and `reward_weights` weighs them. Generation runs through Transformers here; on GPUs,
`use_vllm: true` with `vllm_mode: colocate` (same GPUs) or `server` (`trl vllm-serve` on its own GPUs).
"""

import llm_recipes  # noqa: F401, I001  first of all: it keeps known library start-up noise out of the log
from dataclasses import dataclass, field

from trl import GRPOConfig, GRPOTrainer, ModelConfig, get_peft_config

from llm_recipes import stage
from llm_recipes.model import load_causal_lm
from llm_recipes.pass_at_k import PassAtKArguments, add_pass_at_k_callback
from llm_recipes.rewards import check_reward_columns, check_reward_names, reward_funcs_from_recipe, reward_help
from llm_recipes.rollout_timing import time_grpo_generation


@dataclass
class GRPOArguments(stage.StageArguments):
    reward_funcs: list[str] = field(default_factory=lambda: ["answer_accuracy"], metadata={"help": reward_help()})


# What a recipe of this stage may hold, and the columns its datasets need (the recipe test reads both).
ARGUMENTS = (GRPOArguments, PassAtKArguments, ModelConfig, GRPOConfig)
DATASET_FORMAT = "prompt"
SPEC = stage.StageSpec("grpo", ARGUMENTS, DATASET_FORMAT,
                       examples="prompts", starts_from="a model that already answers (SFT)")
# Held-out numbers kept in the stage summary (TRL logs many more).
WATCHED = ("eval_reward", "eval_kl", "eval_entropy", "eval_completions/mean_length", "eval_completions/clipped_ratio",
           "eval_greedy_accuracy")


def is_watched(key: str) -> bool:
    return (key in WATCHED or key.startswith("eval_pass@")
            or (key.startswith("eval_rewards/") and key.endswith("/mean")))


def check_recipe(run: stage.Run) -> None:
    check_reward_names(run.args.reward_funcs, run.training_args.reward_weights)


def main(argv=None):
    run = stage.prepare(SPEC, argv, check_recipe)
    args, model_args, training_args = run.args, run.model_args, run.training_args
    check_reward_columns(args.reward_funcs, run.data)
    reward_funcs, training_args.reward_weights = reward_funcs_from_recipe(
        args.reward_funcs, training_args.reward_weights, training_args.max_completion_length)
    rewards = ", ".join(f"{w} x {n}" for n, w in zip(args.reward_funcs, training_args.reward_weights))
    if args.dry_run:
        per_step = training_args.per_device_train_batch_size * training_args.world_size
        print(f"completions per step:    {per_step} ({per_step // training_args.num_generations} prompts x "
              f"{training_args.num_generations} generations of <= {training_args.max_completion_length} tokens)")
        print(f"prompts:                 {len(run.data['train']):,}")
        print(f"rewards:                 {rewards}")
        return

    model = load_causal_lm(model_args, run.tokenizer, args.trust_remote_code)
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs,
                          args=training_args, train_dataset=run.data["train"], eval_dataset=run.eval_dataset,
                          processing_class=run.tokenizer, peft_config=get_peft_config(model_args))
    add_pass_at_k_callback(trainer, run.of(PassAtKArguments), trainer.eval_dataset, training_args.temperature,
                           training_args.max_completion_length, training_args.seed)
    stage.logger.info("Rewards: %s", rewards)
    rollouts = time_grpo_generation(trainer)
    stage.train(trainer, run, keep=is_watched, summary=lambda result, evaluated: {
        "seconds_per_step": result.metrics["train_runtime"] / max(result.global_step, 1),
        **rollouts.summary(result.metrics.get("train_runtime")),
        "final_train_reward": stage.last_logged(trainer, "reward"),
        "final_kl": stage.last_logged(trainer, "kl")})


if __name__ == "__main__":
    stage.run(main)
