"""Reward functions for tests, named in recipes by import path (`toy_rewards:digit_share`), so that a stage run in
subprocesses (several processes under `accelerate launch`) can use them too."""

from llm_recipes.rewards import completion_text


def digit_share(completions, **kwargs) -> list[float]:
    """A toy verifiable reward that a random policy learns in a few steps: the share of the reply's characters
    that are digits."""
    texts = [completion_text(c) for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]
