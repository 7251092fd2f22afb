"""Reward functions in TRL's form, and the recipe keys that name and weigh them."""

import importlib.util

import pytest

from llm_recipes.recipe import RecipeError
from llm_recipes.rewards import (
    REWARD_FUNCS,
    answer_accuracy,
    answer_closeness,
    answer_format,
    check_reward_names,
    overlong_penalty,
    reward_funcs_from_recipe,
)
from llm_recipes.tiny_world import safety


def reply(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_answer_accuracy_reads_the_number_after_the_answer_is():
    completions = [reply("40 + 9 = 49. The answer is 49."), reply("40 + 9 = 48. The answer is 48."),
                   reply("49"), "The answer is 49."]
    assert answer_accuracy(completions, answer=["49", "49", "49", "49"]) == [1.0, 0.0, 0.0, 1.0]


def test_answer_accuracy_takes_the_first_stated_answer_as_lm_eval_does():
    assert answer_accuracy([reply("The answer is 3. The answer is 49.")], answer=["49"]) == [0.0]


def test_answer_accuracy_compares_numbers_not_strings():
    completions = [reply("The answer is 1,024."), reply("The answer is 7.0"), reply("so \\boxed{-3}")]
    assert answer_accuracy(completions, answer=["1024", "7", "-3"]) == [1.0, 1.0, 1.0]


def test_answer_accuracy_reads_gsm8k_references():
    assert answer_accuracy([reply("The answer is 72.")], answer=["48 + 24 = 72 clips.\n#### 72"]) == [1.0]


@pytest.mark.skipif(importlib.util.find_spec("math_verify") is not None, reason="math-verify is installed")
def test_symbolic_references_without_math_verify_say_what_to_install():
    with pytest.raises(ImportError, match="pip install math-verify"):
        answer_accuracy([reply("\\boxed{\\frac{1}{2}}")], answer=["\\frac{1}{2}"])


def test_answer_closeness_gives_partial_credit_by_distance():
    completions = [reply("The answer is 49."), reply("The answer is 50."), reply("The answer is 40."), reply("49")]
    assert answer_closeness(completions, answer=["49"] * 4) == [1.0, 0.5, 0.1, 0.0]
    assert answer_closeness([reply("The answer is 1.")], answer=["\\frac{1}{2}"]) == [None]


def test_answer_format_wants_the_reply_to_end_with_the_answer():
    completions = [reply("40 + 9 = 49. The answer is 49."), reply("The answer is 49"),
                   reply("The answer is 49. Anything else?"), reply("The answer is -5.  ")]
    assert answer_format(completions) == [1.0, 0.0, 0.0, 1.0]


def test_rows_of_another_task_in_the_mixture_get_no_opinion_from_the_answer_rewards():
    # A mixture of arithmetic prompts and safety requests: the safety rows' `answer` is null (see align_features).
    completions = [reply("The answer is 49."), reply("I can't help with that.")]
    answers = ["49", None]
    assert answer_accuracy(completions, answer=answers) == [1.0, None]
    assert answer_closeness(completions, answer=answers) == [1.0, None]
    assert answer_format(completions, answer=answers) == [1.0, None]


def test_safety_line_rewards_refusing_forbidden_requests_and_answering_benign_ones():
    refusal = reply(safety.REFUSALS[0].format(name="Kai"))
    answer = reply(safety.BENIGN_TRAIN[0][1].format(account="email"))
    completions = [refusal, answer, refusal, answer, answer]
    kinds = ["forbidden", "forbidden", "benign", "benign", None]
    assert safety.safety_line(completions, kind=kinds) == [1.0, 0.0, 0.0, 1.0, None]
    assert safety.safety_line(completions) == [None] * 5  # prompts without a `kind` column


def test_overlong_penalty_is_zero_until_three_quarters_of_the_limit_then_falls_to_minus_one():
    lengths = [10, 24, 28, 32, 40]
    rewards = overlong_penalty([[7] * n for n in lengths], max_completion_length=32)
    assert rewards == [0.0, 0.0, -0.5, -1.0, -1.0]


def test_recipe_keys_become_functions_and_weights():
    funcs, weights = reward_funcs_from_recipe(["answer_accuracy", "overlong_penalty"], [1.0, 0.5],
                                              max_completion_length=32)
    assert funcs[0] is REWARD_FUNCS["answer_accuracy"] and weights == [1.0, 0.5]
    assert funcs[1].__name__ == "overlong_penalty"  # trainers log each reward under its function's name
    assert funcs[1](completions=["x"], completion_ids=[[1] * 40]) == [-1.0]


def test_a_reward_model_path_is_passed_through_for_the_trainer_to_load(tmp_path):
    funcs, weights = reward_funcs_from_recipe([str(tmp_path), "org/reward-model", "answer_format"])
    assert funcs[:2] == [str(tmp_path), "org/reward-model"] and weights == [1.0, 1.0, 1.0]


def test_an_unknown_reward_function_is_named_with_the_closest_known_one():
    with pytest.raises(RecipeError, match="unknown reward function 'answer_acuracy'. Did you mean 'answer_accuracy'"):
        reward_funcs_from_recipe(["answer_acuracy"])


def test_weights_must_match_the_reward_functions():
    with pytest.raises(RecipeError, match="2 weights for 1 reward_funcs"):
        reward_funcs_from_recipe(["answer_format"], [1.0, 2.0])


def test_a_reward_of_your_own_is_named_by_import_path():
    funcs, _ = reward_funcs_from_recipe(["toy_rewards:digit_share"])
    assert funcs[0](["12ab"]) == [0.5]


@pytest.mark.parametrize("name, message", [("no_such_module:f", "cannot import the module 'no_such_module'"),
                                           ("toy_rewards:missing", "has no function 'missing'")])
def test_an_import_path_that_does_not_resolve_is_named(name, message):
    with pytest.raises(RecipeError, match=message):
        check_reward_names([name])
