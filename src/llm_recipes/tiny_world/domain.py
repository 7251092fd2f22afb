"""The continued-pretraining domain of the tiny world: worked solutions and shop ledgers.

Worked solutions are textbook pages of the skill: a problem, its work column by column, the answer. They are where
a base model that has seen sums mostly in plain form learns to work them out, before SFT teaches it to do so in a
chat. A share of them (`rl_tier_share`) is from the RL tier (three-digit, two-step).
"""

from __future__ import annotations

import random

from llm_recipes.tiny_world.arithmetic import OperandPairs, work
from llm_recipes.tiny_world.problems import RL_TIER, SFT_TIER, draw_problem
from llm_recipes.tiny_world.vocabulary import VOCAB, fill


def worked_solution(rng: random.Random, pool: OperandPairs, rl_tier_share: float) -> str:
    kinds = RL_TIER if rng.random() < rl_tier_share else SFT_TIER
    problem = draw_problem(rng, pool, "train", rng.choice(kinds))
    return f"Problem: {problem.question}\nWork: " + "\n".join(work(problem.steps)) + f"\nAnswer: {problem.answer}."


def ledger(rng: random.Random) -> str:
    """An inventory ledger with running totals; stock stays at 100 or more, outside the 2-digit pairs."""
    item, stock = rng.choice(VOCAB["item"]), rng.randint(100, 400)
    lines = [fill(rng, "Ledger of the {shop} in {town}, week {week}.", week=rng.randint(1, 52)),
             f"Opening stock: {stock} {item}."]
    for day in [VOCAB["day"][i] for i in sorted(rng.sample(range(7), rng.randint(3, 6)))]:
        if stock - 100 < 1 or rng.random() < 0.5:
            amount = rng.randint(1, 99)
            lines.append(f"{day}: received {amount}. {stock} + {amount} = {stock + amount}.")
            stock += amount
        else:
            amount = rng.randint(1, min(99, stock - 100))
            lines.append(f"{day}: sold {amount}. {stock} - {amount} = {stock - amount}.")
            stock -= amount
    lines.append(f"Closing stock: {stock} {item}.")
    return "\n".join(lines)


def build_domain(rng: random.Random, pool: OperandPairs, n: int, prefix: str, rl_tier_share: float) -> list[dict]:
    return [{"id": f"{prefix}-{i:06d}",
             "text": worked_solution(rng, pool, rl_tier_share) if rng.random() < 0.9 else ledger(rng)}
            for i in range(n)]
