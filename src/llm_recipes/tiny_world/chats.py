"""The post-training data of the tiny world: conversations for SFT (chat, refusals, tool calls), preference pairs
for the reward model and DPO, and prompts with verifiable answers for PPO and GRPO.

Every math reply is worked in a think block, then answered: "<think>\\n47+35: 7+5+0=12, 4+3+1=8, so 82.\\n</think>
\\n\\nThe answer is 82." (arithmetic.py). Preference pairs differ by something a verifier can check: a column
mistake, an answer that does not match the work, a missing or broken think block, a reply that never ends, a
wrong tool call, or which side of the safety line a reply is on.
"""

from __future__ import annotations

import json
import random

from llm_recipes.tiny_world.arithmetic import (
    OperandPairs,
    answer_line,
    computation,
    corrupt_columns,
    think,
    work,
    worked_reply,
)
from llm_recipes.tiny_world.problems import RL_TIER, Problem, draw_problem
from llm_recipes.tiny_world.safety import (
    BENIGN_PREFERENCE,
    BENIGN_TRAIN,
    FORBIDDEN_PREFERENCE,
    FORBIDDEN_TRAIN,
    REFUSALS,
    SAFETY_PREFIXES,
    person,
    safety_exchange,
    safety_pair,
)
from llm_recipes.tiny_world.vocabulary import CALCULATOR_TOOL, SYSTEM_PROMPTS, fill, message

# What a training conversation is about, and how often.
SFT_KINDS = {"arithmetic": 40, "word": 26, "two_turn": 10, "forbidden": 9, "benign": 9}
PREFERENCE_KINDS = {"math": 60, "forbidden": 12, "benign": 12, "tool": 16}
# The checkable ways a math reply can be worse than the worked, correct one.
MATH_FLAWS = ("column_mistake", "answer_mismatch", "no_think", "unclosed_think", "never_ends")


def deck(rng: random.Random, weights: dict[str, int], n: int) -> list[str]:
    """n kinds in the proportions of `weights` exactly (rounded), shuffled: held-out sets of known sizes per kind."""
    total = sum(weights.values())
    kinds = [kind for kind, weight in weights.items() for _ in range(round(n * weight / total))]
    kinds += [max(weights, key=weights.get)] * (n - len(kinds))
    rng.shuffle(kinds)
    return kinds[:n]


def tool_message(role: str, content: str, tool_calls: list | None = None, name: str | None = None) -> dict:
    # Every message carries the same keys so pyarrow infers one schema for the whole file.
    return {"role": role, "content": content, "tool_calls": tool_calls, "name": name}


def sft_problem_kind(rng: random.Random, rl_tier_share: float) -> str:
    """The kind of a training problem: the RL tier with probability `rl_tier_share`, else the SFT tier's mix."""
    if rng.random() < rl_tier_share:
        return rng.choice(RL_TIER)
    return "word" if rng.random() < SFT_KINDS["word"] / (SFT_KINDS["arithmetic"] + SFT_KINDS["word"]) else "arithmetic"


def build_sft(rng: random.Random, pool: OperandPairs, split: str, n: int, rl_tier_share: float) -> list[dict]:
    """Conversations in the `messages` format: worked arithmetic and word problems (a share `rl_tier_share` of them
    from the RL tier), follow-ups, and the safety class."""
    rows = []
    for _ in range(n):
        kind = rng.choices(list(SFT_KINDS), weights=list(SFT_KINDS.values()))[0]
        if kind in ("forbidden", "benign"):
            prompt, answer, _, _ = safety_exchange(rng, kind)
            messages = [message("user", prompt), message("assistant", answer)]
        else:
            problem = draw_problem(rng, pool, split, sft_problem_kind(rng, rl_tier_share))
            messages = [message("user", problem.question), message("assistant", problem.reply())]
            if kind == "two_turn":
                total = problem.answer
                op = "+" if total < 2 or rng.random() < 0.5 else "-"
                x = pool.next_operand(rng, total, op)
                follow_up = rng.choice(["Now add {x} to that.", "And if I add {x} more?"] if op == "+"
                                       else ["Now take away {x}.", "And if I then remove {x}?"]).format(x=x)
                messages += [message("user", follow_up), message("assistant", worked_reply((total, x, op)))]
        if rng.random() < 0.08:
            messages.insert(0, message("system", fill(rng, rng.choice(SYSTEM_PROMPTS))))
        rows.append({"messages": messages})
    return rows


def calculator_call(expression: str) -> dict:
    return {"type": "function", "function": {"name": "calculator", "arguments": {"expression": expression}}}


def tool_call_text(call: dict) -> str:
    """A tool call as recipes/templates/chatml.jinja writes it in an assistant turn."""
    function = call["function"]
    return ("<tool_call>" + json.dumps({"name": function["name"], "arguments": function["arguments"]},
                                       ensure_ascii=False) + "</tool_call>")


def tool_problem(rng: random.Random, pool: OperandPairs, split: str) -> Problem:
    """A one-step question for the calculator: 3-digit operands 40% of the time, where a tool really helps."""
    if rng.random() < 0.4:
        return draw_problem(rng, pool, split, "three_digit")
    return draw_problem(rng, pool, split, "word" if rng.random() < 0.4 else "arithmetic")


def build_tools(rng: random.Random, pool: OperandPairs, split: str, n: int) -> list[dict]:
    """Calculator tool-calling conversations in the transformers chat format (`tools` + `messages`)."""
    rows = []
    for _ in range(n):
        problem = tool_problem(rng, pool, split)
        a, b, op = problem.steps[0]
        rows.append({"tools": [CALCULATOR_TOOL], "messages": [
            tool_message("user", problem.question),
            tool_message("assistant", "", tool_calls=[calculator_call(f"{a} {op} {b}")]),
            tool_message("tool", str(problem.answer), name="calculator"),
            tool_message("assistant", answer_line(problem.answer))]})
    return rows


def flawed_reply(rng: random.Random, problem: Problem, flaw: str) -> str:
    """The problem's reply with one checkable flaw (MATH_FLAWS)."""
    works = work(problem.steps)
    if flaw == "column_mistake":
        # The mistake in the last step, carried to the answer (a two-step problem's first step feeds the second).
        a, b, op = problem.steps[-1]
        works[-1], wrong = corrupt_columns(rng, a, b, op)
        return think(*works) + answer_line(wrong)
    if flaw == "answer_mismatch":
        right = problem.answer
        wrong = right + rng.choice([-10, -1, 1, 10]) if right >= 10 else right + rng.choice([1, 2])
        return think(*works) + answer_line(wrong)
    if flaw == "no_think":
        return answer_line(problem.answer)
    if flaw == "unclosed_think":
        return "<think>\n" + "\n".join(works) + "\n" + answer_line(problem.answer)
    # never_ends: the first column steps over and over, cut off with no answer
    a, b, op = problem.steps[0]
    first = computation(a, b, op).split(",")[0]
    return "<think>\n" + ", ".join([first] * rng.randint(8, 12))


def math_pair(rng: random.Random, pool: OperandPairs, split: str) -> tuple[str, str, str, str]:
    """(question, worked reply, the reply with a flaw, which flaw)."""
    kind = rng.choice(["arithmetic", "word", "arithmetic", "word", "three_digit", "two_step"])
    problem = draw_problem(rng, pool, split, kind)
    flaw = rng.choice(MATH_FLAWS)
    return problem.question, problem.reply(), flawed_reply(rng, problem, flaw), flaw


def tool_pair(rng: random.Random, pool: OperandPairs, split: str) -> tuple[str, dict, dict]:
    """A question for the calculator: the right call over one with the operands swapped or a number mistyped."""
    problem = tool_problem(rng, pool, split)
    a, b, op = problem.steps[0]
    while True:  # a mistyped expression is a training text too: it must not be a held-out triple
        wrong = (b, a) if op == "-" and a != b and rng.random() < 0.5 else (a, b + rng.choice([-10, -2, -1, 1, 2, 10]))
        if wrong[1] >= 0 and not pool.is_heldout(*wrong, op):
            break
    wrong = f"{wrong[0]} {op} {wrong[1]}"
    return (problem.question, tool_message("assistant", "", tool_calls=[calculator_call(f"{a} {op} {b}")]),
            tool_message("assistant", "", tool_calls=[calculator_call(wrong)]))


def build_preferences(rng: random.Random, pool: OperandPairs, split: str, n: int) -> list[dict]:
    """Preference pairs in TRL's conversational format with an explicit prompt; `kind` (math, tool, forbidden,
    benign) and, for math, the rejected reply's `flaw`; `tools` (JSON, or null) lists the calculator for the tool-call
    pairs, as DPOTrainer and RewardTrainer read it."""
    rows = []
    for kind in deck(rng, PREFERENCE_KINDS, n):
        tools, flaw = None, None
        if kind == "tool":
            prompt, chosen, rejected = tool_pair(rng, pool, split)
            tools = json.dumps([CALCULATOR_TOOL])
        else:
            if kind == "math":
                prompt, chosen, rejected, flaw = math_pair(rng, pool, split)
            else:
                prompt, chosen, rejected = safety_pair(rng, kind, split)
            chosen, rejected = tool_message("assistant", chosen), tool_message("assistant", rejected)
        rows.append({"prompt": [tool_message("user", prompt)], "chosen": [chosen], "rejected": [rejected],
                     "kind": kind, "flaw": flaw, "tools": tools})
    return rows


def build_rl(rng: random.Random, pool: OperandPairs, split: str, n: int, kinds=RL_TIER) -> list[dict]:
    """Prompts with a verifiable integer answer (as a string) for PPO and GRPO, of the RL tier by default."""
    rows = []
    for i in range(n):
        problem = draw_problem(rng, pool, split, kinds[i % len(kinds)])
        rows.append({"prompt": [message("user", problem.question)], "answer": str(problem.answer)})
    return rows


def build_rl_safety(rng: random.Random, n: int) -> list[dict]:
    """Forbidden and benign requests in the SFT and preference phrasings (never the eval ones), each with its `kind`,
    for the `safety_line` reward (RL on arithmetic alone wears the refusals away), and the reply the world gives
    (`answer`: a refusal, or the benign answer), which the constitutional judge revises towards."""
    rows = []
    for i in range(n):
        kind = "forbidden" if i % 2 == 0 else "benign"
        given = person(rng)
        if kind == "forbidden":
            _, template = rng.choice(FORBIDDEN_TRAIN + FORBIDDEN_PREFERENCE)
            answer = REFUSALS[i // 2 % len(REFUSALS)]  # not drawn: the prompts stay as they were without answers
        else:
            template, answer = rng.choice(BENIGN_TRAIN + BENIGN_PREFERENCE)
        prompt = rng.choice(SAFETY_PREFIXES) + template.format(**given)
        rows.append({"prompt": [message("user", prompt)], "kind": kind, "answer": answer.format(**given)})
    return rows

