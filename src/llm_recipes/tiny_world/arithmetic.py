"""The tiny world's skill: sums and differences, worked digit by digit, and the held-out split of their operands.

A small transformer learns multi-digit addition almost perfectly when the work is written one column at a time,
units first, with the carries (Lee et al. 2023, "Teaching Arithmetic to Small Transformers"); asked for the answer
in one go, it learns far less. So every answer the tiny world teaches is worked that way:

    47+35: 7+5+0=12, 4+3+1=8, so 82.           (a carry: 12 writes 2 and carries 1)
    342-185: 12-5-0=7, 14-8-1=5, 3-1-1=1, so 157.   (a borrow: 2 < 5, so the column reads 12 and lends 1)
    81-77-2                                    (two steps: the expression first, then each computation)
    81-77: 11-7-0=4, 8-7-1=0, so 4.
    4-2: 4-2-0=2, so 2.

Each column shows its digits and the carry (or borrow) it takes in; the last column writes its whole result, the
others their units; "so N" reads the answer back. A model can execute this, and a verifier can check each column.

Tiers of difficulty:
- `sft`: two-digit operands (0..99) and one-step word problems: what SFT teaches;
- `rl`: three-digit operands (100..999) and two-step word problems: where SFT leaves headroom for RL.

Held-out discipline: a seeded share of operand triples (a, b, op) is held out of every training file (addition
symmetrically, so 35 + 47 never leaks 47 + 35). Two-digit triples are split once and listed; three-digit ones are
decided by a seeded hash, since there are 810,000 of them. The one-digit facts that every column uses (7+5, 12-5:
both operands below 20) are never held out: they are the tables every worked answer is made of.
"""

from __future__ import annotations

import hashlib
import random


def calculate(a: int, b: int, op: str) -> int:
    return a + b if op == "+" else a - b


def digits(n: int, width: int) -> list[int]:
    """The digits of n, units first, padded with zeros to `width`."""
    return [(n // 10**i) % 10 for i in range(width)]


def columns(a: int, b: int, op: str) -> list[str]:
    """The column steps of `a op b` (a >= b for subtraction), units first: "7+5+0=12" (digits and carry in), or
    "12-5-0=7" (the top digit lent 10 because it was smaller than what is taken from it)."""
    width = len(str(max(a, b)))
    steps, carry = [], 0
    for x, y in zip(digits(a, width), digits(b, width), strict=True):
        if op == "+":
            total = x + y + carry
            steps.append(f"{x}+{y}+{carry}={total}")
            carry = total // 10
        else:
            top = x + 10 if x < y + carry else x
            steps.append(f"{top}-{y}-{carry}={top - y - carry}")
            carry = int(top >= 10)
    return steps


def computation(a: int, b: int, op: str) -> str:
    """One worked computation: "47+35: 7+5+0=12, 4+3+1=8, so 82." """
    return f"{a}{op}{b}: {', '.join(columns(a, b, op))}, so {calculate(a, b, op)}."


def work(steps: list[tuple[int, int, str]]) -> list[str]:
    """The lines of work for `steps`: each computation, after the whole expression when there are several steps
    ("81-77-2"), so that every operand is copied once, in order, from the question, and the second computation reads
    its operand from that line rather than from far back in the question."""
    lines = [computation(a, b, op) for a, b, op in steps]
    if len(steps) > 1:
        lines.insert(0, f"{steps[0][0]}" + "".join(f"{op}{b}" for _, b, op in steps))
    return lines


def think(*lines: str) -> str:
    """A reply's reasoning, in the think block of reasoning models (Qwen3, DeepSeek-R1)."""
    return "<think>\n" + "\n".join(lines) + "\n</think>\n\n"


def answer_line(value: int) -> str:
    return f"The answer is {value}."


def worked_reply(*steps: tuple[int, int, str]) -> str:
    """The assistant's reply to a problem solved by `steps` [(a, b, op), ...]: the work, then the answer."""
    result = None
    for a, b, op in steps:
        result = calculate(a, b, op)
    return think(*work(list(steps))) + answer_line(result)


def corrupt_columns(rng: random.Random, a: int, b: int, op: str) -> tuple[str, int]:
    """A computation with one plausible column mistake (a dropped carry or borrow, or a column off by one) carried
    through to a wrong result; returns (text, wrong result)."""
    width = len(str(max(a, b)))
    xs, ys = digits(a, width), digits(b, width)
    while True:
        broken = rng.randrange(width)
        steps, written, carry = [], [], 0
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            taken = 0 if i == broken and carry else carry  # the mistake: a carry or borrow forgotten
            if op == "+":
                total = x + y + taken + (rng.choice([-1, 1]) if i == broken and not carry else 0)
                total = max(total, 0)
                steps.append(f"{x}+{y}+{taken}={total}")
                carry = total // 10
                written.append(total % 10 if i < width - 1 else total)
            else:
                top = x + 10 if x < y + taken else x
                value = top - y - taken + (rng.choice([-1, 1]) if i == broken and not carry else 0)
                value = min(max(value, 0), 9)
                steps.append(f"{top}-{y}-{taken}={value}")
                carry = int(top >= 10)
                written.append(value)
        wrong = int("".join(str(d) for d in reversed(written)))
        if wrong != calculate(a, b, op):
            return f"{a}{op}{b}: {', '.join(steps)}, so {wrong}.", wrong


class OperandPairs:
    """Which operand triples (a, b, op) are held out, and draws of training or held-out ones per tier."""

    def __init__(self, seed: int, heldout_fraction: float):
        self.seed, self.heldout_fraction = seed, heldout_fraction
        rng = random.Random(f"{seed}:heldout")
        self.pairs = {"train": {"+": [], "-": []}, "heldout": {"+": [], "-": []}}
        for op in "+-":
            for a in range(100):
                for b in range(100):
                    if (op == "-" and b > a) or (op == "+" and b < a):
                        continue  # a + b with b < a is decided together with its mirror b + a
                    split = "heldout" if rng.random() < heldout_fraction else "train"
                    if a < 20 and b < 20:
                        split = "train"  # a column fact (the draw above still happens: the split stays seeded)
                    self.pairs[split][op].append((a, b))
                    if op == "+" and a != b:
                        self.pairs[split][op].append((b, a))
        self.heldout = frozenset((a, b, op) for op in "+-" for a, b in self.pairs["heldout"][op])

    def is_heldout(self, a: int, b: int, op: str) -> bool:
        """Whether (a, b, op) is held out: listed for two-digit operands, hashed for three-digit ones; an operation of
        a three-digit number with a smaller one (a ledger, a two-step problem's second step) is no eval item."""
        if max(a, b) < 100:
            return (a, b, op) in self.heldout
        if min(a, b) < 100:
            return False
        low, high = sorted((a, b)) if op == "+" else (b, a)
        digest = hashlib.blake2b(f"{self.seed}:{low}{op}{high}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < self.heldout_fraction

    def draw(self, rng: random.Random, split: str, low: int = 0) -> tuple[int, int, str]:
        """One random two-digit (a, b, op) of `split`, half additions, with both operands at least `low`."""
        op = rng.choice("+-")
        while True:
            a, b = rng.choice(self.pairs[split][op])
            if a >= low and b >= low:
                return a, b, op

    def draw_three_digit(self, rng: random.Random, split: str) -> tuple[int, int, str]:
        """One random (a, b, op) with 3-digit operands (100..999) of `split`, half additions."""
        op = rng.choice("+-")
        while True:
            a, b = rng.randint(100, 999), rng.randint(100, 999)
            if op == "-" and b > a:
                a, b = b, a
            if self.is_heldout(a, b, op) == (split == "heldout"):
                return a, b, op

    def sample(self, rng: random.Random, split: str, n: int, low: int = 0) -> list[tuple[int, int, str]]:
        """Up to n distinct two-digit triples of `split`, both operands at least `low`."""
        candidates = [(a, b, op) for op in "+-" for a, b in self.pairs[split][op] if a >= low and b >= low]
        return rng.sample(candidates, min(n, len(candidates)))

    def sample_three_digit(self, rng: random.Random, split: str, n: int) -> list[tuple[int, int, str]]:
        """n distinct 3-digit triples of `split`."""
        drawn: dict[tuple[int, int, str], None] = {}  # first-seen order, unlike a set
        while len(drawn) < n:
            drawn.setdefault(self.draw_three_digit(rng, split), None)
        return list(drawn)

    def next_operand(self, rng: random.Random, a: int, op: str) -> int:
        """A second operand x for `a op x` (1..99, keeping a - x non-negative) whose triple is not held out."""
        while True:
            x = rng.randint(1, 99) if op == "+" else rng.randint(1, min(a, 99))
            if not self.is_heldout(a, x, op):
                return x

    def two_step(self, rng: random.Random, split: str) -> tuple[tuple[int, int, str], tuple[int, int, str]]:
        """A two-step problem's steps ((a, b, op1), (c, x, op2)) with c = a op1 b: held out when its first step is;
        a training problem's second step is never a held-out triple either."""
        a, b, op = self.draw(rng, split, low=2)
        c = calculate(a, b, op)
        op2 = "+" if c < 2 or rng.random() < 0.5 else "-"
        return (a, b, op), (c, self.next_operand(rng, c, op2), op2)
