"""Pretraining lowers held-out loss, saves a model plain Transformers reloads, and resumes to the same result."""

import json
import shutil

import pytest
import torch
from conftest import load_script
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from llm_recipes.recipe import RecipeError

ARCHITECTURE = """
model_config:
  model_type: llama
  hidden_size: 64
  intermediate_size: 128
  num_hidden_layers: 2
  num_attention_heads: 4
  num_key_value_heads: 2
  max_position_embeddings: 256
  tie_word_embeddings: true
"""


def write_recipe(path, tiny_world, tiny_tokenizer, output_dir, max_steps=120, extra=""):
    path.write_text(
        f"output_dir: {output_dir}\ntokenizer_name_or_path: {tiny_tokenizer}\n{ARCHITECTURE}"
        f"max_seq_length: 64\n"
        f"dataset_mixture:\n  datasets: [{tiny_world}/raw/web.jsonl]\n"
        f"  eval_datasets: [{tiny_world}/raw/web_heldout.jsonl]\n"
        f"use_cpu: true\nseed: 7\nmax_steps: {max_steps}\nper_device_train_batch_size: 16\n"
        f"learning_rate: 3.0e-3\nwarmup_steps: 5\nlr_scheduler_type: cosine\n"
        f"eval_strategy: 'no'\neval_on_start: true\nlogging_steps: 10\nsave_strategy: steps\nsave_steps: 40\n"
        f"report_to: none\ndisable_tqdm: true\n{extra}"
    )
    return path


@pytest.fixture(scope="module")
def pretrained(tiny_world, tiny_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    recipe = write_recipe(out / "recipe.yaml", tiny_world, tiny_tokenizer, out / "model")
    load_script("pretrain").main(["--config", str(recipe)])
    return out / "model"


def test_pretraining_lowers_held_out_loss(pretrained):
    summary = json.loads((pretrained / "stage_complete.json").read_text())
    assert summary["eval_loss"] < 0.6 * summary["eval_loss_before"]
    assert summary["eval_perplexity"] < summary["eval_perplexity_before"]


def test_saved_model_reloads_with_plain_from_pretrained(pretrained):
    model = AutoModelForCausalLM.from_pretrained(pretrained)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 2
    assert (pretrained / "model.safetensors").exists()
    assert not list(pretrained.rglob("pytorch_model*"))  # weights in safetensors only, checkpoints included
    assert not list(pretrained.glob("*.bin"))  # the final folder holds no pickles at all
    assert json.loads((pretrained / "training_args.json").read_text())["max_steps"] == 120


def test_resumed_run_ends_with_identical_weights(pretrained, tiny_world, tiny_tokenizer, tmp_path):
    # A run killed after step 40, with a half-written checkpoint-80 (no trainer state), then launched again.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(pretrained / "checkpoint-40", resumed / "checkpoint-40")
    (resumed / "checkpoint-80").mkdir()
    shutil.copy(pretrained / "checkpoint-80" / "model.safetensors", resumed / "checkpoint-80")
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_world, tiny_tokenizer, resumed)
    load_script("pretrain").main(["--config", str(recipe)])

    uninterrupted, continued = load_file(pretrained / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name, weight in uninterrupted.items():
        assert torch.equal(weight, continued[name]), name
    final = [json.loads((d / "stage_complete.json").read_text())["final_train_loss"] for d in (pretrained, resumed)]
    assert final[0] == final[1]


def test_dry_run_sizes_the_run_and_trains_nothing(tiny_world, tiny_tokenizer, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_world, tiny_tokenizer, tmp_path / "out")
    load_script("pretrain").main(["--config", str(recipe), "--dry_run"])
    printed = capsys.readouterr().out
    assert "tokens per optimizer step: 1,024" in printed  # 16 sequences x 64 tokens x 1 process
    assert "total steps:             120" in printed
    assert not (tmp_path / "out").exists()


def test_unknown_architecture_key_is_named_before_training(tiny_world, tiny_tokenizer, tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_world, tiny_tokenizer, tmp_path / "out")
    recipe.write_text(recipe.read_text().replace("hidden_size: 64", "hiden_size: 64"))
    with pytest.raises(RecipeError, match="unknown key 'hiden_size'.*'hidden_size'"):
        load_script("pretrain").main(["--config", str(recipe)])
    assert not (tmp_path / "out").exists()


def test_a_second_architecture_trains_from_the_same_script(tiny_world, tiny_tokenizer, tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_world, tiny_tokenizer, tmp_path / "qwen3", max_steps=40)
    recipe.write_text(recipe.read_text().replace("model_type: llama", "model_type: qwen3\n  head_dim: 16"))
    load_script("pretrain").main(["--config", str(recipe)])
    summary = json.loads((tmp_path / "qwen3" / "stage_complete.json").read_text())
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "qwen3").config.model_type == "qwen3"
    assert summary["eval_loss"] < 0.8 * summary["eval_loss_before"]


def test_continued_pretraining_adapts_to_the_domain_without_forgetting(pretrained, tiny_world, tmp_path):
    # The recipe's two held-out sets are measured apart, before and after; replay keeps the general corpus.
    recipe = tmp_path / "cpt.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path}/cpt\nmodel_name_or_path: {pretrained}\nmax_seq_length: 64\n"
        f"dataset_mixture:\n  datasets:\n    - {{path: {tiny_world}/domain/train.jsonl, weight: 0.75}}\n"
        f"    - {{path: {tiny_world}/raw/web.jsonl, weight: 0.25}}\n"
        f"  eval_datasets:\n    domain: {tiny_world}/domain/heldout.jsonl\n"
        f"    general: {tiny_world}/raw/web_heldout.jsonl\n  max_examples: 2000\n"
        "use_cpu: true\nseed: 3\nmax_steps: 60\nper_device_train_batch_size: 16\nlearning_rate: 1.0e-3\n"
        "warmup_steps: 6\nlr_scheduler_type: cosine\neval_strategy: 'no'\neval_on_start: true\n"
        "save_strategy: 'no'\nreport_to: none\ndisable_tqdm: true\n"
    )
    load_script("pretrain").main(["--config", str(recipe)])
    summary = json.loads((tmp_path / "cpt" / "stage_complete.json").read_text())
    assert summary["eval_domain_perplexity"] < 0.5 * summary["eval_domain_perplexity_before"]
    assert summary["eval_general_perplexity"] < 1.10 * summary["eval_general_perplexity_before"]


def test_config_overrides_extend_the_context_of_a_checkpoint(pretrained, tiny_world, tmp_path):
    recipe = tmp_path / "long.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path}/long\nmodel_name_or_path: {pretrained}\nmax_seq_length: 256\npacking: false\n"
        "model_config_overrides:\n  rope_parameters: {rope_type: yarn, rope_theta: 10000.0, factor: 4.0, "
        "original_max_position_embeddings: 64}\n  max_position_embeddings: 1024\n"
        f"dataset_mixture:\n  datasets: [{tiny_world}/long/train.jsonl]\n"
        "use_cpu: true\nmax_steps: 3\nper_device_train_batch_size: 4\nsave_strategy: 'no'\nreport_to: none\n"
    )
    load_script("pretrain").main(["--config", str(recipe)])
    config = AutoModelForCausalLM.from_pretrained(tmp_path / "long").config
    assert config.max_position_embeddings == 1024
    assert config.rope_parameters["rope_type"] == "yarn" and config.rope_parameters["factor"] == 4.0
