"""PPO (RLHF): raise the reward of an SFT model's replies while a KL penalty keeps it near where it started.

    accelerate launch scripts/ppo.py --config recipes/tiny/ppo.yaml
    accelerate launch --config_file accelerate_configs/single_gpu.yaml scripts/ppo.py \
        --config recipes/qwen3-0.6b/ppo.yaml

Our own trainer (llm_recipes/ppo/: TRL no longer ships one). The policy starts from `model_name_or_path` (the SFT
model); the reference is a frozen copy of it, or with `use_peft: true` the LoRA policy with its adapters disabled.
Replies are scored by `reward_funcs`, weighted by `reward_weights`: reward functions by name (llm_recipes/rewards.py,
the same ones GRPO uses) and/or reward models by path (the reward stage's output). The value model starts from
`value_model_path`, else the first reward model, else the policy's checkpoint with a new head (`load_value_model`);
with `value_head: shared` it is one linear head on the policy's last hidden states instead.

Data are prompts (`prompt`, conversational or text) with the columns the reward functions read (`answer` for
answer_accuracy): list them under `columns:`. The held-out prompts are answered greedily before training
(`eval_on_start`) and after; the summary holds each reward's mean, the KL to the reference, reply length, and where
a PPO step's seconds went (generation, scoring, training).
"""

import llm_recipes  # noqa: F401, I001  first of all: it keeps known library start-up noise out of the log
from peft import get_peft_model
from trl import ModelConfig, get_peft_config

from llm_recipes import stage
from llm_recipes.model import load_causal_lm
from llm_recipes.pass_at_k import PassAtKArguments, add_pass_at_k_callback
from llm_recipes.ppo import PPOConfig, PPOTrainer, load_value_model
from llm_recipes.rewards import check_reward_columns

# What a recipe of this stage may hold, and the columns its datasets need (the recipe test reads both).
ARGUMENTS = (stage.StageArguments, PassAtKArguments, ModelConfig, PPOConfig)
DATASET_FORMAT = "prompt"
SPEC = stage.StageSpec("ppo", ARGUMENTS, DATASET_FORMAT,
                       examples="prompts", starts_from="a trained (usually SFT) policy", named_eval_sets=False,
                       no_lm_eval="PPO evaluates its held-out prompts itself; run scripts/evaluate.py on the output "
                       "for lm-eval tasks.")
# Seconds of one PPO step (rollout, scoring, updates; evaluations and checkpoints apart) and of its parts, as the
# trainer logs them; the summary reports their means.
STEP_TIMINGS = {"seconds_per_step": "time/step", "seconds_per_step_generation": "time/generation",
                "seconds_per_step_scoring": "time/scoring", "seconds_per_step_training": "time/training"}
LAST_LOGGED = ("objective/kl", "objective/scores", "objective/entropy", "val/explained_variance")


def training_summary(trainer, training_args: PPOConfig) -> dict:
    """Mean step timings and the last logged training values (a resumed run reports the same numbers)."""
    logs = [h for h in trainer.state.log_history if "objective/kl" in h]
    return {**{name: sum(h[key] for h in logs) / max(len(logs), 1) for name, key in STEP_TIMINGS.items()},
            **({f"train_{key.replace('/', '_')}": logs[-1][key] for key in LAST_LOGGED} if logs else {}),
            "train_kl_max": max((h["objective/kl"] for h in logs), default=None),
            "reward_funcs": training_args.reward_funcs}


def main(argv=None):
    run = stage.prepare(SPEC, argv)
    model_args, training_args, held_out = run.model_args, run.training_args, run.eval_dataset
    check_reward_columns(training_args.reward_funcs, run.data)
    if run.args.dry_run:
        print(training_args.dry_run_plan(len(run.data["train"])))
        return

    trust_remote_code, peft_config = run.args.trust_remote_code, get_peft_config(model_args)
    model, ref_model = load_causal_lm(model_args, run.tokenizer, trust_remote_code), None
    if peft_config is not None:
        model = get_peft_model(model, peft_config)
    else:
        ref_model = load_causal_lm(model_args, run.tokenizer, trust_remote_code)
    value_model = None  # value_head: shared reads values off the policy
    if training_args.value_head == "separate":
        value_model = load_value_model(training_args, model_args, run.tokenizer, trust_remote_code)
    trainer = PPOTrainer(args=training_args, processing_class=run.tokenizer, model=model, ref_model=ref_model,
                         value_model=value_model, train_dataset=run.data["train"], eval_dataset=held_out)
    add_pass_at_k_callback(trainer, run.of(PassAtKArguments), held_out, training_args.temperature,
                           training_args.max_completion_length, training_args.seed, policy_of=lambda m: m.policy)
    # Before training (eval_on_start): the SFT parent.
    stage.train(trainer, run, summary=lambda result, evaluated: {
        **training_summary(trainer, training_args),
        **trainer.rollout_clock.summary(result.metrics.get("train_runtime"))})


if __name__ == "__main__":
    stage.run(main)
