"""AI feedback: sampled answers ranked by a judge become preference pairs that DPO's data loader accepts."""

import json

import pytest
from conftest import load_script

from llm_recipes import rewards
from llm_recipes.data import DatasetMixture, build_mixture
from llm_recipes.recipe import RecipeError


@pytest.fixture(scope="module")
def tiny_models(tiny_tokenizer, tmp_path_factory):
    """An untrained chat policy and an untrained reward model sharing the tiny tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    root = tmp_path_factory.mktemp("preference_models")
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer)
    config = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, vocab_size=len(tokenizer), max_position_embeddings=256,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                  num_labels=1)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "policy")
    AutoModelForSequenceClassification.from_config(config).save_pretrained(root / "reward")
    for name in ("policy", "reward"):
        tokenizer.save_pretrained(root / name)
    return root


def run(tmp_path, tiny_world, models, judge_lines: list[str]):
    recipe = tmp_path / "prefs.yaml"
    recipe.write_text("\n".join([
        f"output_dir: {tmp_path / 'pairs'}", f"model_name_or_path: {models / 'policy'}",
        "dataset_mixture:", "  datasets:", f"    - path: {tiny_world}/rl/train.jsonl",
        "      columns: [prompt, answer]", "  max_examples: 12",
        "num_samples: 3", "max_new_tokens: 8", "batch_size: 6", *judge_lines]) + "\n")
    load_script("generate_preferences").main(["--config", str(recipe)])
    return [json.loads(line) for line in (tmp_path / "pairs/train.jsonl").read_text().splitlines()]


def test_reward_model_judge_writes_pairs_that_dpo_data_loading_accepts(tiny_world, tiny_models, tmp_path):
    pairs = run(tmp_path, tiny_world, tiny_models,
                ["judge: reward_model", f"reward_model_name_or_path: {tiny_models / 'reward'}"])
    assert 0 < len(pairs) <= 12
    assert all(p["score_chosen"] > p["score_rejected"] for p in pairs)
    assert all(p["chosen"][0]["role"] == "assistant" and p["prompt"][0]["role"] == "user" for p in pairs)
    mixture = DatasetMixture.from_recipe({"datasets": [str(tmp_path / "pairs/train.jsonl")]})
    data, _ = build_mixture(mixture, "preference")
    assert len(data["train"]) == len(pairs)


def test_reward_functions_judge_prefers_the_better_scored_answer(tiny_world, tiny_models, tmp_path, monkeypatch):
    def digit_share(completions, **kwargs):
        texts = [rewards.completion_text(c) for c in completions]
        return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]

    monkeypatch.setitem(rewards.REWARD_FUNCS, "digit_share", digit_share)
    pairs = run(tmp_path, tiny_world, tiny_models, ["judge: reward_funcs", "reward_funcs: [digit_share]"])
    for pair in pairs:
        chosen, rejected = digit_share([pair["chosen"], pair["rejected"]])
        assert chosen > rejected


def test_constitution_judge_chooses_the_revision_over_the_original(tiny_world, tiny_models, tmp_path, repo_root):
    pairs = run(tmp_path, tiny_world, tiny_models, [
        "judge: constitution", f"judge_model_name_or_path: {tiny_models / 'policy'}",
        f"constitution_path: {repo_root / 'recipes/templates/constitution.txt'}"])
    assert pairs and all(p["chosen"] != p["rejected"] for p in pairs)


def test_a_judge_without_its_model_is_refused_before_anything_loads(tiny_world, tiny_models, tmp_path):
    with pytest.raises(RecipeError, match="reward_model_name_or_path"):
        run(tmp_path, tiny_world, tiny_models, ["judge: reward_model"])
    assert not (tmp_path / "pairs").exists()


def run_revisions(tmp_path, tiny_world, models, constitution: str):
    recipe = tmp_path / "revisions.yaml"
    recipe.write_text("\n".join([
        f"output_dir: {tmp_path / 'revisions'}", f"model_name_or_path: {models / 'policy'}",
        "dataset_mixture:", "  datasets:", f"    - path: {tiny_world}/rl/safety_train.jsonl",
        "      columns: [prompt, kind, answer]", "  max_examples: 16",
        "judge: constitution", "output_format: revisions", "num_samples: 1", "max_new_tokens: 8", "batch_size: 8",
        "constitution_rules: 'llm_recipes.tiny_world:constitution_rules'", f"constitution_path: {constitution}"])
        + "\n")
    load_script("generate_preferences").main(["--config", str(recipe)])
    return [json.loads(line) for line in (tmp_path / "revisions/train.jsonl").read_text().splitlines()]


def test_constitutional_revisions_fix_what_breaks_a_principle_and_keep_the_rest(tiny_world, tiny_models, tmp_path,
                                                                               repo_root):
    """SL-CAI: an untrained policy never refuses, so every forbidden request's reply is critiqued against the
    principle it breaks and revised to a refusal; benign replies break nothing and are kept as sampled."""
    from llm_recipes.tiny_world import is_refusal

    rows = run_revisions(tmp_path, tiny_world, tiny_models, str(repo_root / "recipes/templates/constitution.txt"))
    kinds = {json.dumps(r["prompt"]): r["kind"] for r in map(json.loads, open(tiny_world / "rl/safety_train.jsonl"))}
    assert len(rows) == 16
    for row in rows:
        prompt, reply = row["messages"][:-1], row["messages"][-1]
        assert reply["role"] == "assistant"
        if kinds[json.dumps(prompt)] == "forbidden":
            assert "another person's account" in row["critique"] and is_refusal(reply["content"])
            assert not is_refusal(row["original"])
        else:
            assert row["critique"] is None and reply["content"] == row["original"]
    mixture = DatasetMixture.from_recipe({"datasets": [{"path": str(tmp_path / "revisions/train.jsonl"),
                                                        "columns": ["messages"]}]})
    assert len(build_mixture(mixture, "conversational")[0]["train"]) == 16


def test_a_constitution_without_the_principle_the_rules_enforce_is_refused(tiny_world, tiny_models, tmp_path):
    constitution = tmp_path / "constitution.txt"
    constitution.write_text("Give the correct number.\n")
    with pytest.raises(RecipeError, match="constitution_rules: .*another person's account"):
        run_revisions(tmp_path, tiny_world, tiny_models, str(constitution))
    assert not (tmp_path / "revisions").exists()
