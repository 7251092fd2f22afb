"""Reward functions for RL stages (PPO, GRPO), in TRL's reward-function form.

A reward function is `f(completions, **kwargs) -> list[float | None]`: `completions` are the generated replies,
conversational (`[{"role": "assistant", "content": ...}]`) or plain strings; the trainer also passes `prompts`,
`completion_ids`, and every dataset column by its name (`answer`, `solution`, ...). `None` means "no opinion on this
one" and is left out of the weighted sum (TRL's GRPOTrainer does the same).

A recipe names its rewards and weighs them:

    reward_funcs: [answer_accuracy, answer_format]     # names in REWARD_FUNCS, or a reward model's path
    reward_weights: [1.0, 0.2]

A function of your own is named by its import path, `my_package.my_rewards:my_reward` (a module the script can
import: installed, or on PYTHONPATH); its name is kept in the logs as `my_reward`.

`reward_funcs_from_recipe` turns those keys into callables (and reward-model paths, which the trainer loads), naming
an unknown function and the closest known one.
"""

import functools
import importlib
import math
import re
from collections.abc import Callable
from pathlib import Path

from trl.rewards import accuracy_reward, get_soft_overlong_punishment, think_format_reward

from llm_recipes.recipe import RecipeError, closest_key
from llm_recipes.tiny_world.safety import safety_line

# The tiny world's answer form ("40 + 9 = 49. The answer is 49."); lm-eval's strict filter reads the same number.
ANSWER_IS = re.compile(r"The answer is\s*\$?(-?[\d,]*\.?\d+)")
BOXED = re.compile(r"\\boxed\{\s*(-?[\d,]*\.?\d+)\s*\}")
# GSM8K writes its final answer after "####".
GSM8K_ANSWER = re.compile(r"####\s*(-?[\d,]*\.?\d+)\s*$")
FORMAT = re.compile(r"The answer is -?[\d,]*\.?\d+\.\s*$")


def completion_text(completion) -> str:
    """The text of one completion, conversational (a list of messages) or plain."""
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content") or "" for message in completion if message.get("role", "assistant")
                   == "assistant")


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def extract_answer(text: str) -> float | None:
    """The number a reply gives as its answer: the first "The answer is N", else the last \\boxed{N}."""
    match = ANSWER_IS.search(text)
    if match:
        return _number(match.group(1))
    boxed = BOXED.findall(text)
    return _number(boxed[-1]) if boxed else None


def gold_number(answer) -> float | None:
    """The reference answer as a number: a plain number ("49", "1,024"), or GSM8K's "... #### 49"; None otherwise."""
    text = str(answer).strip()
    value = _number(text)
    if value is None:
        match = GSM8K_ANSWER.search(text)
        value = _number(match.group(1)) if match else None
    return value


def answer_accuracy(completions, answer: list, **kwargs) -> list[float | None]:
    """1.0 when the reply's answer equals the `answer` column, else 0.0.

    A numeric reference is compared with the number after "The answer is" (or in \\boxed{}); any other reference
    (LaTeX, expressions) is checked by math-verify through TRL's `accuracy_reward`, which needs `pip install
    math-verify` and returns None for a reference it cannot parse.
    """
    rewards: list[float | None] = [None] * len(completions)
    symbolic = []
    for i, (completion, gold) in enumerate(zip(completions, answer, strict=True)):
        if gold is None:  # a row of another task in the mixture, which has no answer: no opinion
            continue
        reference = gold_number(gold)
        if reference is None:
            symbolic.append(i)
            continue
        predicted = extract_answer(completion_text(completion))
        rewards[i] = float(predicted is not None and math.isclose(predicted, reference, abs_tol=1e-6))
    if symbolic:
        try:
            verified = accuracy_reward([[{"role": "assistant", "content": completion_text(completions[i])}]
                                        for i in symbolic], [str(answer[i]) for i in symbolic])
        except ImportError as e:
            raise ImportError(f"answer_accuracy: the reference answer {answer[symbolic[0]]!r} is not a plain number, "
                              "and checking it symbolically needs math-verify: `pip install math-verify`.") from e
        for i, reward in zip(symbolic, verified):
            rewards[i] = reward
    return rewards


def answer_closeness(completions, answer: list, **kwargs) -> list[float | None]:
    """Partial credit for a numeric answer: 1 / (1 + |answer - reference|), so 1.0 when right, 0.5 when one off;
    0.0 without an answer, None for a reference that is not a number. A denser signal than answer_accuracy for a
    policy that is rarely exactly right."""
    rewards: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        reference = None if gold is None else gold_number(gold)
        predicted = extract_answer(completion_text(completion))
        if reference is None:
            rewards.append(None)
        else:
            rewards.append(0.0 if predicted is None else 1.0 / (1.0 + abs(predicted - reference)))
    return rewards


def answer_format(completions, answer: list | None = None, **kwargs) -> list[float | None]:
    """1.0 when the reply ends with "The answer is N." (the form the answer is read from), else 0.0; None for a row
    whose `answer` is null, a row of another task in the mixture that should not end with a number."""
    answer = answer if answer is not None else [""] * len(completions)
    return [None if gold is None else float(bool(FORMAT.search(completion_text(c).strip())))
            for c, gold in zip(completions, answer, strict=True)]


def overlong_penalty(completion_ids, max_completion_length: int, **kwargs) -> list[float]:
    """DAPO's soft overlong punishment (TRL's `get_soft_overlong_punishment`): 0 up to 3/4 of
    `max_completion_length` tokens, then falling linearly to -1 at the limit."""
    punish = get_soft_overlong_punishment(max_completion_length, soft_punish_cache=max(max_completion_length // 4, 1))
    return punish(completion_ids)


class Reward:
    """A registered reward function, called as the function itself, with what a stage checks before training: the
    dataset column it reads its reference from (`reads`) and whether it needs the completion length limit."""

    def __init__(self, func: Callable, reads: str | None = None, needs_max_length: bool = False):
        self.func, self.reads, self.needs_max_length = func, reads, needs_max_length
        self.__name__, self.__doc__ = func.__name__, func.__doc__  # trainers log a reward by its __name__

    def __call__(self, *args, **kwargs):
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Reward({self.__name__})"

    def with_max_length(self, max_completion_length: int | None) -> "Reward":
        """This reward with `max_completion_length` bound, if it needs it."""
        if not self.needs_max_length:
            return self
        if max_completion_length is None:
            raise RecipeError(f"reward_funcs: '{self.__name__}' needs the maximum completion length.")
        bound = functools.update_wrapper(functools.partial(self.func, max_completion_length=max_completion_length),
                                         self.func)
        return Reward(bound, self.reads)


# The one registry of reward functions by name. A recipe may also name a function by its import path
# (`module:function`) or a reward model by its folder or Hub id.
REWARD_FUNCS: dict[str, Reward] = {
    "answer_accuracy": Reward(answer_accuracy, reads="answer"),
    "answer_closeness": Reward(answer_closeness, reads="answer"),
    "answer_format": Reward(answer_format),
    "overlong_penalty": Reward(overlong_penalty, needs_max_length=True),
    "safety_line": Reward(safety_line, reads="kind"),
    # TRL's own, for data in their forms: `solution` column checked by math-verify; <think>...</think> replies.
    "accuracy": Reward(accuracy_reward, reads="solution"),
    "think_format": Reward(think_format_reward),
}


def reward_help() -> str:
    """The `reward_funcs` help of every RL stage, from the registry (so it names every registered function)."""
    return (f"Reward functions by name ({', '.join(REWARD_FUNCS)}), by import path (`module:function`), or a reward "
            "model's folder or Hub id (a sequence-classification model with one output); weighed by "
            "`reward_weights` (one per entry, 1.0 each if unset).")


def check_reward_columns(names: list[str], data) -> None:
    """Every column a named reward function reads is in every split of `data` (a DatasetDict), before training."""
    for name in names:
        column = getattr(REWARD_FUNCS.get(name), "reads", None)
        for split, dataset in data.items():
            if column and column not in dataset.column_names:
                raise RecipeError(f"reward_funcs: '{name}' reads the column '{column}', which the {split} prompts "
                                  f"lack (they have {', '.join(dataset.column_names)}). List the `{column}` column "
                                  "under the datasets' `columns:` (only the prompt is kept otherwise), or rename a "
                                  "column to it with `rename_columns:`.")


def is_reward_model(name: str) -> bool:
    """A `reward_funcs` entry that names a reward model: a local folder, or a Hub id ("org/name")."""
    return Path(name).is_dir() or ("/" in name and name not in REWARD_FUNCS and ":" not in name)


def imported_function(name: str, key: str = "reward_funcs") -> Callable:
    """The function a `module.path:function` entry of `key` names (a reward, a constitution's rules, a quality
    judge), or a RecipeError saying what is missing."""
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise RecipeError(f"{key}: '{name}': cannot import the module '{module_name}' ({e}). Install it or "
                          "put its folder on PYTHONPATH.") from e
    func = getattr(module, attribute, None)
    if not callable(func):
        raise RecipeError(f"{key}: '{name}': the module '{module_name}' has no function '{attribute}'.")
    return func


def check_reward_names(names: list[str], weights: list[float] | None = None, where: str = "reward_funcs") -> None:
    """Raise a RecipeError naming an unknown reward function (and the closest known one) or a weight count that
    does not match; checked when a recipe is parsed, before anything is loaded."""
    if not names:
        raise RecipeError(f"{where}: empty; name at least one reward function ({', '.join(REWARD_FUNCS)}) or reward "
                          "model, or every reply scores only its penalties.")
    for name in names:
        if ":" in name:
            imported_function(name)
        elif name not in REWARD_FUNCS and not is_reward_model(name):
            suggestion = closest_key(name, REWARD_FUNCS)
            did_you_mean = f" Did you mean '{suggestion}'?" if suggestion else ""
            raise RecipeError(f"{where}: unknown reward function '{name}'.{did_you_mean} Known functions: "
                              f"{', '.join(REWARD_FUNCS)}; a reward model is named by its folder or Hub id.")
    if weights is not None and len(weights) != len(names):
        raise RecipeError(f"reward_weights: {len(weights)} weights for {len(names)} reward_funcs ({names}); give one "
                          "weight per reward function, in the same order.")


def reward_funcs_from_recipe(
    names: list[str], weights: list[float] | None = None, max_completion_length: int | None = None
) -> tuple[list[Callable | str], list[float]]:
    """The recipe's `reward_funcs` and `reward_weights` as TRL trainers take them: callables for function names and
    the path itself for a reward model (the trainer loads it); weights default to 1.0 each."""
    check_reward_names(names, weights)
    funcs: list[Callable | str] = []
    for name in names:
        if name in REWARD_FUNCS:
            entry = REWARD_FUNCS[name]
            funcs.append(entry.with_max_length(max_completion_length) if isinstance(entry, Reward) else entry)
        elif ":" in name:
            funcs.append(imported_function(name))
        else:
            funcs.append(name)
    return funcs, list(weights) if weights is not None else [1.0] * len(names)
