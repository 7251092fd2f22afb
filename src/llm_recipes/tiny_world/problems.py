"""Math problems of the tiny world as text: questions, word problems and two-step problems, each with its steps.

A `Problem` is what every stage's data is built from: its question, the (a, b, op) steps that solve it, and its kind.
The kinds make the tiers of arithmetic.py: `arithmetic` and `word` are the SFT tier (two-digit operands, one step);
`three_digit` and `two_step` are the RL tier.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from llm_recipes.tiny_world.arithmetic import OperandPairs, calculate, worked_reply
from llm_recipes.tiny_world.vocabulary import (
    ARITHMETIC_QUESTIONS,
    ARITHMETIC_SENTENCES,
    NAMES,
    TWO_STEP_CHANGES,
    TWO_STEP_QUESTIONS,
    TWO_STEP_START,
    WORD_PROBLEMS,
    fill,
    number_words,
)

SFT_TIER = ("arithmetic", "word")
RL_TIER = ("three_digit", "two_step")
KINDS = SFT_TIER + RL_TIER


@dataclass
class Problem:
    question: str
    steps: list[tuple[int, int, str]]
    kind: str

    @property
    def answer(self) -> int:
        a, b, op = self.steps[-1]
        return calculate(a, b, op)

    @property
    def tier(self) -> str:
        return "sft" if self.kind in SFT_TIER else "rl"

    def reply(self) -> str:
        """The reply the tiny world teaches: the work in a think block, then "The answer is N." """
        return worked_reply(*self.steps)


def arithmetic_question(rng: random.Random, a: int, b: int, op: str) -> str:
    return rng.choice(ARITHMETIC_QUESTIONS[op]).format(a=a, b=b)


def word_problem(rng: random.Random, a: int, b: int, op: str) -> str:
    return fill(rng, rng.choice(WORD_PROBLEMS[op]), a=a, b=b)


def two_step_problem(rng: random.Random, first: tuple[int, int, str], second: tuple[int, int, str]) -> str:
    """"{name} had 47 pears. Then 35 more pears arrived. Then 20 of them were given away. How many ...?" """
    subject = rng.choice(["item", "animal"])
    start = rng.choice([t for t in TWO_STEP_START if ("{animal}" in t) == (subject == "animal")])
    given = {"name": rng.choice(NAMES)}
    given[subject] = fill(rng, "{" + subject + "}")
    changes = TWO_STEP_CHANGES[subject]
    sentences = [fill(rng, start, a=first[0], **given),
                 "Then " + fill(rng, rng.choice(changes[first[2]]), b=first[1], **given),
                 "After that, " + fill(rng, rng.choice(changes[second[2]]), b=second[1], **given),
                 fill(rng, TWO_STEP_QUESTIONS[subject], **given)]
    return " ".join(sentences)


def draw_problem(rng: random.Random, pool: OperandPairs, split: str, kind: str) -> Problem:
    """A random problem of `kind` whose operands belong to `split` ("train" or "heldout")."""
    if kind == "arithmetic":
        a, b, op = pool.draw(rng, split)
        return Problem(arithmetic_question(rng, a, b, op), [(a, b, op)], kind)
    if kind == "word":
        a, b, op = pool.draw(rng, split, low=2)
        return Problem(word_problem(rng, a, b, op), [(a, b, op)], kind)
    if kind == "three_digit":
        a, b, op = pool.draw_three_digit(rng, split)
        return Problem(arithmetic_question(rng, a, b, op), [(a, b, op)], kind)
    if kind == "two_step":
        first, second = pool.two_step(rng, split)
        return Problem(two_step_problem(rng, first, second), [first, second], kind)
    raise ValueError(f"unknown problem kind {kind!r}; known: {', '.join(KINDS)}")


def arithmetic_sentence(rng: random.Random, a: int, b: int, op: str) -> str:
    """A sentence of web prose that states a sum plainly: "Forty-seven plus 35 is 82, as every child knows." """
    return fill(rng, rng.choice(ARITHMETIC_SENTENCES[op]), a=a, b=b, c=calculate(a, b, op),
                A=number_words(a).capitalize() if a < 100 else str(a))


def quiz_line(a: int, b: int, op: str) -> str:
    """The raw completion form that base models are scored on: `Q: 47+35=? A: 82`."""
    return f"Q: {a}{op}{b}=? A: {calculate(a, b, op)}"
