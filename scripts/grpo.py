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

import time
from dataclasses import dataclass, field

from trl import GRPOConfig, GRPOTrainer, ModelConfig, get_peft_config

from llm_recipes import stage
from llm_recipes.data import DatasetMixture, build_mixture, check_declared_columns
from llm_recipes.evaluation import add_lm_eval_callback
from llm_recipes.model import format_count, load_causal_lm, load_tokenizer
from llm_recipes.pass_at_k import PassAtKArguments, add_pass_at_k_callback
from llm_recipes.recipe import RecipeError, RecipeParser
from llm_recipes.rewards import REWARD_COLUMNS, check_reward_names, reward_funcs_from_recipe


@dataclass
class GRPOArguments(stage.StageArguments):
    reward_funcs: list[str] = field(
        default_factory=lambda: ["answer_accuracy"],
        metadata={"help": "Reward functions by name (llm_recipes/rewards.py: answer_accuracy, answer_format, "
                  "overlong_penalty, accuracy, think_format) or a reward model's folder or Hub id; weighed by "
                  "`reward_weights` (one per function, 1.0 each if unset)."},
    )


# Held-out numbers kept in the stage summary (TRL logs many more).
WATCHED = ("eval_reward", "eval_kl", "eval_entropy", "eval_completions/mean_length", "eval_completions/clipped_ratio",
           "eval_greedy_accuracy")


def is_watched(key: str) -> bool:
    return (key in WATCHED or key.startswith("eval_pass@")
            or (key.startswith("eval_rewards/") and key.endswith("/mean")))


ARGUMENTS = (GRPOArguments, PassAtKArguments, ModelConfig, GRPOConfig)
DATASET_FORMAT = "prompt"


def check_reward_columns(reward_funcs: list[str], columns: list[str], source: str) -> None:
    """A reward function that reads a reference column needs it in the data: say which, before training."""
    for name in reward_funcs:
        column = REWARD_COLUMNS.get(name)
        if column and column not in columns:
            raise RecipeError(f"reward_funcs: '{name}' reads the reference answer from a `{column}` column, which "
                              f"{source} does not have (columns: {', '.join(columns)}). List it in the source's "
                              f"`columns:` (only the prompt is kept otherwise), or map a column to it with "
                              f"`rename_columns`.")


def main(argv=None):
    args, pass_args, model_args, training_args = RecipeParser(ARGUMENTS).parse(argv)
    stage.start(args, training_args)
    check_reward_names(args.reward_funcs, training_args.reward_weights)
    if not model_args.model_name_or_path:
        raise RecipeError("Set model_name_or_path: GRPO starts from a model that already answers (SFT).")
    mixture = DatasetMixture.from_recipe(args.dataset_mixture)
    check_declared_columns(mixture, DATASET_FORMAT)
    data, report = build_mixture(mixture, DATASET_FORMAT)
    check_reward_columns(args.reward_funcs, data["train"].column_names, "the training mixture")
    stage.logger.info("Dataset mixture (%s prompts):\n%s", f"{report.total_examples:,}", report.to_markdown())
    held_out = {name: split for name, split in data.items() if name != "train"}
    tokenizer = load_tokenizer(args.tokenizer_name_or_path or model_args.model_name_or_path, args.trust_remote_code)
    reward_funcs, weights = reward_funcs_from_recipe(args.reward_funcs, training_args.reward_weights,
                                                     training_args.max_completion_length)
    training_args.reward_weights = weights
    if args.dry_run:
        per_step = training_args.per_device_train_batch_size * training_args.world_size
        print(f"completions per step:    {per_step} ({per_step // training_args.num_generations} prompts x "
              f"{training_args.num_generations} generations of <= {training_args.max_completion_length} tokens)")
        print(f"prompts:                 {len(data['train']):,}")
        print(f"rewards:                 {', '.join(f'{w} x {n}' for n, w in zip(args.reward_funcs, weights))}")
        return

    model = load_causal_lm(model_args.model_name_or_path, None, tokenizer, model_args.dtype,
                           model_args.attn_implementation, args.trust_remote_code, model_args.model_revision)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=held_out.get("test") if list(held_out) == ["test"] else (held_out or None),
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    add_lm_eval_callback(trainer, args)
    add_pass_at_k_callback(trainer, pass_args, trainer.eval_dataset, training_args.temperature,
                           training_args.max_completion_length, training_args.seed)
    stage.logger.info("Model: %s parameters; rewards: %s", format_count(model.num_parameters()),
                      ", ".join(f"{w} x {n}" for n, w in zip(args.reward_funcs, weights)))
    started = time.time()
    result = trainer.train(resume_from_checkpoint=stage.checkpoint_to_resume(training_args))
    summary = {
        "stage": "grpo",
        "train_steps_per_second": result.metrics["train_steps_per_second"],
        "seconds_per_step": result.metrics["train_runtime"] / max(result.global_step, 1),
        "wall_seconds": time.time() - started,
        "final_train_reward": stage.last_logged(trainer, "reward"),
        "final_kl": stage.last_logged(trainer, "kl"),
        "mixture": report.rows,
    }
    if held_out:
        summary.update(stage.evaluate_held_out(trainer, keep=is_watched))
    stage.finish(trainer, training_args, summary, args, model_args)


if __name__ == "__main__":
    stage.run(main)
