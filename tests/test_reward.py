"""A reward model learns to score chosen replies above rejected ones, and is saved as a plain Transformers model."""

import json

import pytest
import torch
from conftest import load_script, save_small_llama
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from llm_recipes.data import DatasetFormatError
from llm_recipes.recipe import RecipeError

PREFERENCE_COLUMNS = "columns: [prompt, chosen, rejected]"


@pytest.fixture(scope="module")
def parent(tiny_tokenizer, tmp_path_factory):
    """A small causal LM checkpoint with the tiny tokenizer (random weights: the score head learns from scratch)."""
    return save_small_llama(tiny_tokenizer, tmp_path_factory.mktemp("parent"))


def write_recipe(path, parent, pairs, output_dir, extra=""):
    """Trains on `pairs` and measures on the same pairs: 300 pairs in the small tiny world."""
    path.write_text(
        f"output_dir: {output_dir}\nmodel_name_or_path: {parent}\nmax_length: 256\n"
        f"dataset_mixture:\n  datasets:\n    - {{path: {pairs}, {PREFERENCE_COLUMNS}}}\n"
        f"  eval_datasets:\n    - {{path: {pairs}, {PREFERENCE_COLUMNS}}}\n"
        "use_cpu: true\nbf16: false\ngradient_checkpointing: false\nseed: 0\nmax_steps: 160\n"
        "per_device_train_batch_size: 16\nlearning_rate: 3.0e-3\nwarmup_steps: 4\neval_strategy: 'no'\n"
        "eval_on_start: true\nper_device_eval_batch_size: 100\nlogging_steps: 10\nsave_strategy: 'no'\n"
        f"report_to: none\ndisable_tqdm: true\n{extra}"
    )
    return path


@pytest.fixture(scope="module")
def reward_model(parent, tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("reward")
    recipe = write_recipe(out / "recipe.yaml", parent, tiny_world / "preferences" / "train.jsonl", out / "model")
    load_script("reward").main(["--config", str(recipe)])
    return out / "model"


def test_training_raises_pairwise_accuracy_and_margin(reward_model):
    summary = json.loads((reward_model / "stage_complete.json").read_text())
    assert summary["eval_pairs"] == {"test": 300}
    assert summary["eval_accuracy"] >= 0.7  # chance is 0.5
    assert summary["eval_accuracy"] > summary["eval_accuracy_before"] + 0.15
    assert summary["eval_margin"] > summary["eval_margin_before"] + 1.0
    assert summary["train_tokens_per_second"] > 0


def test_model_card_presents_a_text_classifier_with_its_pair_accuracy(reward_model):
    card = (reward_model / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "AutoModelForSequenceClassification.from_pretrained" in card
    assert "name: pair accuracy" in card  # the held-out accuracy is in the model-index


def test_saved_model_reloads_with_plain_from_pretrained_and_scores_as_measured(reward_model, tiny_world):
    model = AutoModelForSequenceClassification.from_pretrained(reward_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(reward_model)
    assert model.config.num_labels == 1
    assert model.config.pad_token_id == tokenizer.pad_token_id is not None  # finds the last real token
    assert (reward_model / "model.safetensors").exists() and not list(reward_model.glob("*.bin"))

    def score(messages):
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
        with torch.no_grad():
            return model(**ids).logits.item()

    pairs = [json.loads(line) for line in (tiny_world / "preferences" / "train.jsonl").read_text().splitlines()]
    wins = [score(p["prompt"] + p["chosen"]) > score(p["prompt"] + p["rejected"]) for p in pairs]
    summary = json.loads((reward_model / "stage_complete.json").read_text())
    assert abs(sum(wins) / len(wins) - summary["eval_accuracy"]) <= 1 / len(wins)  # at most one pair differs


def test_a_margin_column_asks_for_that_much_more_reward_for_chosen(parent, tiny_world, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    held_out = (tiny_world / "preferences" / "test_verifiable.jsonl").read_text().splitlines()
    pairs.write_text("".join(json.dumps({**json.loads(line), "margin": 3.0}) + "\n" for line in held_out))
    recipe = write_recipe(tmp_path / "recipe.yaml", parent, pairs, tmp_path / "out")
    recipe.write_text(recipe.read_text().replace("rejected]", "rejected, margin]"))
    load_script("reward").main(["--config", str(recipe), "--max_steps", "1", "--logging_steps", "1",
                                "--eval_on_start", "false"])
    first_loss = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"][0]["loss"]
    # The untrained head scores both replies alike: -log σ(0 - 3) = 3.05, where without a margin it is log 2.
    assert first_loss == pytest.approx(3.05, abs=0.2)


def test_pairs_without_rejected_are_named_before_any_model_loads(tiny_world, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    held_out = (tiny_world / "preferences" / "test_verifiable.jsonl").read_text().splitlines()
    pairs.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "rejected"}) + "\n"
                             for line in held_out))
    recipe = write_recipe(tmp_path / "recipe.yaml", tmp_path / "no_such_model", pairs, tmp_path / "out")
    recipe.write_text(recipe.read_text().replace(f", {PREFERENCE_COLUMNS}", ""))
    with pytest.raises(DatasetFormatError, match=f"Dataset '{pairs}' has no column 'rejected'"):
        load_script("reward").main(["--config", str(recipe)])
    assert not (tmp_path / "out").exists()


def test_lora_reward_model_must_train_its_score_head(parent, tiny_world, tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", parent, tiny_world / "preferences" / "test_verifiable.jsonl",
                          tmp_path / "out", extra="use_peft: true\n")
    with pytest.raises(RecipeError, match="lora_task_type: SEQ_CLS"):
        load_script("reward").main(["--config", str(recipe)])
