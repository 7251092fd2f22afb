"""The regression gate compares a model's lm-eval results with an earlier release's, task by task, and counts a fall
as a regression only beyond the noise of the two measurements."""

import json

import pytest

from llm_recipes.recipe import RecipeError
from llm_recipes.regression import load_baseline, regressions


def results(accuracy: float, stderr: float, perplexity: float = 3.0) -> dict:
    return {"results": {"math": {"exact_match,strict": accuracy, "exact_match_stderr,strict": stderr},
                        "web": {"word_perplexity,none": perplexity, "word_perplexity_stderr,none": "N/A"}},
            "higher_is_better": {"math": {"exact_match": True}, "web": {"word_perplexity": False}}}


def test_a_fall_beyond_the_noise_of_both_measurements_is_a_regression():
    (found,) = regressions(results(0.60, 0.02), results(0.80, 0.02))
    assert (found.task, found.metric, found.baseline, found.current) == ("math", "exact_match,strict", 0.8, 0.6)
    assert found.threshold == pytest.approx(2 * (0.02**2 + 0.02**2) ** 0.5)
    assert "math exact_match,strict: 0.6 against 0.8 in v1" in found.describe("v1")


def test_a_fall_within_the_noise_or_a_rise_is_not():
    assert regressions(results(0.76, 0.02), results(0.80, 0.02)) == []  # 0.04 < 2 x 0.028
    assert regressions(results(0.90, 0.02), results(0.80, 0.02)) == []


def test_lower_is_better_metrics_regress_when_they_rise():
    (found,) = regressions(results(0.8, 0.02, perplexity=4.0), results(0.8, 0.02, perplexity=3.0))
    assert found.task == "web"  # no standard error: any rise beyond min_drop counts
    assert regressions(results(0.8, 0.02, perplexity=4.0), results(0.8, 0.02, perplexity=3.0), min_drop=2.0) == []


def test_only_tasks_both_releases_hold_are_compared():
    baseline = results(0.8, 0.02)
    del baseline["results"]["math"]
    assert regressions(results(0.1, 0.01), baseline) == []


def test_a_baseline_is_a_results_file_or_a_folder_holding_one(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(results(0.8, 0.02)))
    assert load_baseline(str(tmp_path)) == load_baseline(str(tmp_path / "results.json")) == results(0.8, 0.02)
    with pytest.raises(RecipeError, match="no results file at"):
        load_baseline(str(tmp_path / "v0" / "results.json"))


def test_a_hub_baseline_that_an_offline_machine_has_not_cached_is_named(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RecipeError, match="someone/tiny-chat@v1 has no results.json in the cache"):
        load_baseline("someone/tiny-chat", revision="v1")
