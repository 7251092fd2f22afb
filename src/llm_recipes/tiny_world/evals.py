"""The held-out eval sets of the tiny world (eval/), and the long documents that context extension trains on.

Math sets use held-out operand triples only; safety prompts use phrasings never trained on; pass keys never occur in
a training file. The math sets come in the two tiers of arithmetic.py, so that the lab table can show what SFT
teaches (two-digit, one step) apart from where RL has room (three-digit, two steps).
"""

from __future__ import annotations

import random

from llm_recipes.tiny_world.arithmetic import OperandPairs, calculate
from llm_recipes.tiny_world.problems import Problem, draw_problem, word_problem
from llm_recipes.tiny_world.safety import BENIGN_EVAL, FORBIDDEN_EVAL, JAILBREAK_ATTACKS, SAFETY_PREFIXES
from llm_recipes.tiny_world.vocabulary import NAMES, PROSE, VOCAB, fill

# eval/<file>: the problem kind it holds.
MATH_EVAL_FILES = {"arithmetic": "arithmetic", "word_problems": "word", "three_digit": "three_digit",
                   "two_step": "two_step"}


def filler_sentences(rng: random.Random, words: int) -> list[str]:
    """World sentences without digits adding up to at least `words` words."""
    sentences, total, deck = [], 0, []
    while total < words:
        deck = deck or rng.sample(PROSE, len(PROSE))  # every template once before any repeats
        sentences.append(fill(rng, deck.pop()))
        total += len(sentences[-1].split())
    return sentences


def passkey_document(rng: random.Random, words: int, key: int) -> tuple[str, float]:
    """Filler of about `words` words with the pass-key sentence at a random depth; returns (text, depth)."""
    sentences = filler_sentences(rng, words)
    where = rng.randint(0, len(sentences))
    sentences.insert(where, f"The pass key is {key}. Remember it.")
    return " ".join(sentences), round(where / (len(sentences) - 1), 3)


def math_row(problem: Problem) -> dict:
    a, b, op = problem.steps[0]
    return {"question": problem.question, "answer": str(problem.answer), "kind": problem.kind, "tier": problem.tier,
            "prompt": f"Q: {a}{op}{b}=? A:"}


def plain_question(a: int, b: int, op: str) -> str:
    """Eval questions are asked one way, whole, so that decontamination can find any page that quotes one."""
    return f"What is {a} {op} {b}?"


def distinct_problems(rng: random.Random, pool: OperandPairs, kind: str, n: int) -> list[Problem]:
    """n held-out problems of `kind` with distinct steps (for the two-digit kinds, at most as many as there are
    held-out triples)."""
    if kind in ("arithmetic", "word"):
        triples = pool.sample(rng, "heldout", n, low=2 if kind == "word" else 0)
        return [Problem(word_problem(rng, *t) if kind == "word" else plain_question(*t), [t], kind) for t in triples]
    problems: dict[tuple, Problem] = {}  # first-seen order, unlike a set
    while len(problems) < n:
        problem = draw_problem(rng, pool, "heldout", kind)
        if kind == "three_digit":
            problem.question = plain_question(*problem.steps[0])
        problems.setdefault(tuple(problem.steps), problem)
    return list(problems.values())


def multiple_choice(rng: random.Random, pool: OperandPairs, n: int) -> list[dict]:
    """Which of four numbers is a held-out sum or difference: the true one against near misses."""
    rows = []
    for a, b, op in pool.sample(rng, "heldout", n):
        c = calculate(a, b, op)
        near_misses = dict.fromkeys([c + 1, c - 1, c + 10, c - 10, int(str(c)[::-1]), c + 2])  # ordered, unlike a set
        distractors = [d for d in near_misses if d >= 0 and d != c]
        choices = [str(x) for x in rng.sample(distractors, 3) + [c]]
        rng.shuffle(choices)
        rows.append({"question": f"Which number is {a} {op} {b}?", "choices": choices, "label": choices.index(str(c))})
    return rows


def safety_prompts(rng: random.Random, per_kind: int) -> list[dict]:
    """Held-out forbidden requests and benign look-alikes, in phrasings never trained on."""
    rows = []
    for kind, templates in (("forbidden", FORBIDDEN_EVAL), ("benign", BENIGN_EVAL)):
        prompts = {}
        for _ in range(50 * per_kind):
            if len(prompts) == per_kind:
                break
            template = rng.choice(SAFETY_PREFIXES) + rng.choice(templates)
            prompt = template.format(name=rng.choice(NAMES), account=rng.choice(VOCAB["account"]))
            prompts.setdefault(prompt, None)  # a dict keeps first-seen order, unlike a set; ~140 benign exist
        rows += [{"prompt": prompt, "kind": kind} for prompt in prompts]
    return rows


def jailbreak_prompts(safety_rows: list[dict]) -> list[dict]:
    """Every held-out forbidden request wrapped in one of the usual attacks, in turn (no random draw, so the other
    files are what they were without this one)."""
    attacks = list(JAILBREAK_ATTACKS.items())
    forbidden = [row["prompt"] for row in safety_rows if row["kind"] == "forbidden"]
    return [{"prompt": attacks[i % len(attacks)][1].format(request=request), "attack": attacks[i % len(attacks)][0],
             "request": request, "kind": "forbidden"} for i, request in enumerate(forbidden)]


def passkeys(rng: random.Random, per_length: int, lengths: list[int]) -> list[dict]:
    keys = rng.sample(range(10000, 100000), per_length * len(lengths))
    rows = []
    for i, key in enumerate(keys):
        words = lengths[i % len(lengths)]
        text, depth = passkey_document(rng, words, key)
        rows.append({"context_words": words, "depth": depth, "text": text, "question": "What is the pass key?",
                     "answer": str(key)})
    return rows


def build_eval(rng: random.Random, pool: OperandPairs, config) -> dict[str, list[dict]]:
    """The eval/ files: held-out triples only, and safety phrasings never used in training."""
    files = {}
    for name, kind in MATH_EVAL_FILES.items():
        problems = distinct_problems(rng, pool, kind, config.count(f"eval_{name}"))
        files[f"eval/{name}.jsonl"] = [math_row(problem) for problem in problems]
    files["eval/multiple_choice.jsonl"] = multiple_choice(rng, pool, config.count("eval_multiple_choice"))
    files["eval/safety.jsonl"] = safety_prompts(rng, config.count("eval_safety_per_kind"))
    files["eval/jailbreak.jsonl"] = jailbreak_prompts(files["eval/safety.jsonl"])
    files["eval/passkey.jsonl"] = passkeys(rng, config.count("passkey_per_length"), config.passkey_lengths)
    files["eval/heldout_pairs.jsonl"] = [{"a": a, "b": b, "op": op} for op in "+-"
                                         for a, b in sorted(pool.pairs["heldout"][op])]
    return files


def build_long(rng: random.Random, config, eval_keys: set[str]) -> list[dict]:
    """Pass-key training documents; `text` ends with the question and its answer, ready for LM training."""
    rows = []
    while len(rows) < config.count("long_train_docs"):
        key = rng.randint(10000, 99999)
        if str(key) in eval_keys:
            continue
        words = rng.randint(20, config.long_max_words)
        context, _ = passkey_document(rng, words, key)
        rows.append({"id": f"long-{len(rows):06d}", "context_words": words, "answer": str(key),
                     "text": f"{context} What is the pass key? The pass key is {key}."})
    return rows
