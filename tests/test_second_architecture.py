"""Swapping the model is a YAML change: the tiny chain's own recipes, with only the pretraining recipe's
`model_config` turned from Llama into Qwen3, take a Qwen3 model through every training stage and the export, with
the same scripts.

Short runs (a few steps a stage) on the small tiny world: what each stage achieves is asserted by its own tests;
here each stage must accept the other architecture and hand on a checkpoint of it."""

import json

import pytest
import yaml
from conftest import REPO_ROOT, load_script
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

pytestmark = pytest.mark.slow

QWEN3 = dict(model_type="qwen3", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=512, tie_word_embeddings=True)
SHORT = {"max_steps": 6, "save_steps": 3, "logging_steps": 2, "per_device_train_batch_size": 8}


def overrides(values: dict) -> list[str]:
    return [token for key, value in values.items() for token in (f"--{key}", str(value))]


def test_qwen3_goes_through_the_tiny_chain_with_the_same_scripts(tiny_world, tiny_tokenizer, tmp_path, monkeypatch):
    # The tiny recipes read runs/tiny/...: lay out the small tiny world there, and run from that folder.
    runs = tmp_path / "runs" / "tiny"
    (runs / "prepared" / "data").mkdir(parents=True)
    (runs / "data").symlink_to(tiny_world)
    (runs / "tokenizer").symlink_to(tiny_tokenizer)
    (runs / "prepared" / "data" / "web.jsonl").symlink_to(tiny_world / "raw" / "web.jsonl")
    monkeypatch.chdir(tmp_path)

    pretrain_recipe = yaml.safe_load((REPO_ROOT / "recipes/tiny/pretrain.yaml").read_text())
    pretrain_recipe["model_config"] = QWEN3  # the one change
    (tmp_path / "pretrain.yaml").write_text(yaml.safe_dump(pretrain_recipe))

    def run(script, recipe, **values):
        load_script(script).main(["--config", str(recipe), *overrides(values)])

    tiny = REPO_ROOT / "recipes" / "tiny"
    run("pretrain", tmp_path / "pretrain.yaml", max_steps=30, warmup_steps=3, eval_steps=30, save_steps=30,
        lr_scheduler_kwargs='{"num_decay_steps": 6}', per_device_train_batch_size=16)
    run("sft", tiny / "sft.yaml", model_name_or_path="runs/tiny/pretrain", eval_steps=6, **SHORT)
    run("reward", tiny / "reward.yaml", eval_steps=6, **SHORT)
    run("generate_preferences", tiny / "generate_preferences.yaml", judge="reward_model",
        reward_model_name_or_path="runs/tiny/reward", num_samples=2)
    run("dpo", tiny / "dpo.yaml", **SHORT)
    run("ppo", tiny / "ppo.yaml", max_steps=2, save_steps=1, logging_steps=1, per_device_train_batch_size=8,
        local_rollout_forward_batch_size=16)
    run("grpo", tiny / "grpo.yaml", max_steps=2, save_steps=1, logging_steps=1, per_device_train_batch_size=16)
    run("export", tiny / "export.yaml", eval_limit=8)

    pretrain = json.loads((runs / "pretrain" / "stage_complete.json").read_text())
    assert pretrain["eval_loss"] < pretrain["eval_loss_before"]
    for stage in ("pretrain", "sft", "dpo", "ppo", "grpo", "export"):
        assert AutoConfig.from_pretrained(runs / stage).model_type == "qwen3", stage
        assert (runs / stage / "stage_complete.json").is_file(), stage
    assert type(AutoModelForCausalLM.from_pretrained(runs / "grpo")).__name__ == "Qwen3ForCausalLM"
    assert type(AutoModelForSequenceClassification.from_pretrained(runs / "reward")).__name__ == \
        "Qwen3ForSequenceClassification"
    lineage = json.loads((runs / "export" / "lineage.json").read_text())
    assert [entry["stage"] for entry in lineage][-4:] == ["pretrain", "sft", "grpo", "export"]
