"""GRPO stage: rewards named in the recipe move the policy; bad recipes fail before any model loads."""

import json

import pytest
from conftest import load_script, save_tiny_policy

from llm_recipes import rewards
from llm_recipes.recipe import RecipeError


def digit_share(completions, **kwargs) -> list[float]:
    """A toy verifiable reward: the share of characters of the reply that are digits."""
    texts = [rewards.completion_text(c) for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


@pytest.fixture
def tiny_policy(tiny_tokenizer, tmp_path):
    return save_tiny_policy(tiny_tokenizer, tmp_path / "policy")


def recipe(tmp_path, tiny_world, policy, reward_funcs="[digit_share]", columns="[prompt, answer]",
           more_sources=(), **extra):
    """GRPO on the tiny world's arithmetic prompts, plus `more_sources` (YAML lines of more training sources)."""
    path = tmp_path / "grpo.yaml"
    lines = [
        f"output_dir: {tmp_path / 'out'}", f"model_name_or_path: {policy}", f"reward_funcs: {reward_funcs}",
        "dataset_mixture:", "  datasets:", f"    - path: {tiny_world}/rl/train.jsonl", f"      columns: {columns}",
        *more_sources,
        f"  eval_datasets: [{{path: {tiny_world}/rl/test.jsonl, columns: {columns}}}]",
        "  max_examples: 400",
        "num_generations: 8", "max_completion_length: 8", "per_device_train_batch_size: 32",
        "temperature: 1.0", "learning_rate: 3.0e-2", "lr_scheduler_type: constant", "max_steps: 16", "beta: 0.0",
        "use_cpu: true", "bf16: false", "gradient_checkpointing: false", "logging_steps: 1", "save_strategy: 'no'",
        "report_to: none", "seed: 0", "disable_tqdm: true", "eval_on_start: true", "eval_strategy: 'no'",
        "per_device_eval_batch_size: 64", "num_generations_eval: 1",
    ] + [f"{k}: {v}" for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return ["--config", str(path)]


def test_grpo_raises_a_verifiable_reward(tiny_world, tiny_policy, tmp_path, monkeypatch):
    monkeypatch.setitem(rewards.REWARD_FUNCS, "digit_share", digit_share)
    load_script("grpo").main(recipe(tmp_path, tiny_world, tiny_policy))
    history = json.loads((tmp_path / "out/trainer_state.json").read_text())["log_history"]
    reward = [h["reward"] for h in history if "reward" in h]
    assert len(reward) == 16
    first, last = sum(reward[:4]) / 4, sum(reward[-4:]) / 4
    assert last > first + 0.1, reward
    # The held-out prompts, answered before training and after (stage summary): the reward rose there too.
    summary = json.loads((tmp_path / "out/stage_complete.json").read_text())
    assert summary["eval_reward"] > summary["eval_reward_before"] + 0.1, summary
    assert json.loads((tmp_path / "out/stage_complete.json").read_text())["stage"] == "grpo"
    assert json.loads((tmp_path / "out/lineage.json").read_text())[-1]["datasets"] == ["rl/train.jsonl (local)"]


def test_unknown_reward_function_is_named_with_the_closest_one(tiny_world, tiny_policy, tmp_path):
    with pytest.raises(RecipeError, match="'answer_acuracy'.*Did you mean 'answer_accuracy'"):
        load_script("grpo").main(recipe(tmp_path, tiny_world, tiny_policy, reward_funcs="[answer_acuracy]"))
    assert not (tmp_path / "out").exists()


def test_reward_reading_a_missing_column_fails_before_training(tiny_world, tiny_policy, tmp_path):
    with pytest.raises(RecipeError, match="`answer` column"):
        load_script("grpo").main(recipe(tmp_path, tiny_world, tiny_policy, reward_funcs="[answer_accuracy]",
                                        columns="[prompt]"))
    assert not (tmp_path / "out").exists()


def test_a_mixture_of_tasks_scores_each_row_only_with_its_own_rewards(tiny_world, tiny_policy, tmp_path):
    # Arithmetic prompts (with `answer`) and safety requests (with `kind`), as recipes/tiny/grpo_safety.yaml mixes
    # them: each reward gives no opinion (None) on the other task's rows.
    safety_source = ["      weight: 0.5",
                     f"    - {{path: {tiny_world}/rl/safety_train.jsonl, columns: [prompt, kind], weight: 0.5}}"]
    load_script("grpo").main(recipe(tmp_path, tiny_world, tiny_policy, max_steps=4, more_sources=safety_source,
                                    reward_funcs="[answer_format, 'llm_recipes.tiny_world:safety_line']"))
    history = json.loads((tmp_path / "out/trainer_state.json").read_text())["log_history"]
    safety = [h["rewards/safety_line/mean"] for h in history if "rewards/safety_line/mean" in h and "step" in h]
    # A random policy never refuses: 1.0 on benign requests, 0.0 on forbidden ones; each step samples both tasks.
    assert len(safety) == 4 and all(0.0 <= s <= 1.0 for s in safety) and 0.0 < sum(safety) < 4.0, safety
    # The held-out prompts are arithmetic only: the safety reward scored none of them and is not reported.
    summary = json.loads((tmp_path / "out/stage_complete.json").read_text())
    assert "eval_rewards/answer_format/mean" in summary
    assert not any("safety_line" in key for key in summary)
