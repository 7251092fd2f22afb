"""A mixture-of-experts model through the same scripts: pretrained from a recipe's model_config with the router's
load-balancing loss on, its experts' shares of tokens in the summary, then fine-tuned by SFT with no code change."""

import json

import pytest
import test_pretrain
import test_sft
from conftest import load_script

MOE = """model_config:
  model_type: qwen3_moe
  hidden_size: 64
  num_hidden_layers: 2
  num_attention_heads: 4
  num_key_value_heads: 2
  num_experts: 4
  num_experts_per_tok: 2
  moe_intermediate_size: 64
  output_router_logits: true
  router_aux_loss_coef: 0.01
  max_position_embeddings: 512
  tie_word_embeddings: true
"""


@pytest.fixture(scope="module")
def moe_model(tiny_world, tiny_tokenizer, tmp_path_factory, monkeypatch_module):
    out = tmp_path_factory.mktemp("moe")
    monkeypatch_module.setattr(test_pretrain, "ARCHITECTURE", MOE)
    recipe = test_pretrain.write_recipe(out / "recipe.yaml", tiny_world, tiny_tokenizer, out / "model", max_steps=60)
    load_script("pretrain").main(["--config", str(recipe)])
    return out / "model"


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_moe_pretraining_logs_the_balancing_loss_and_keeps_every_expert_alive(moe_model):
    summary = json.loads((moe_model / "stage_complete.json").read_text())
    assert summary["eval_loss"] < 0.8 * summary["eval_loss_before"]  # 6.26 -> 4.12 in 60 steps here
    state = json.loads((moe_model / "trainer_state.json").read_text())
    aux = [entry["moe_aux_loss"] for entry in state["log_history"] if "moe_aux_loss" in entry]
    assert len(aux) == 6 and all(a > 0 for a in aux)
    assert summary["final_moe_aux_loss"] == aux[-1]
    shares = summary["expert_shares"]
    assert len(shares) == 2 and all(len(layer) == 4 for layer in shares)
    assert all(abs(sum(layer) - 1) < 1e-3 for layer in shares)
    # The balancing loss keeps every expert in use: none falls near zero (a uniform share is 0.25).
    assert summary["min_expert_share"] > 0.05, shares


def test_sft_runs_on_the_moe_checkpoint_with_no_code_change(moe_model, tiny_world, tmp_path):
    from transformers import AutoModelForCausalLM

    recipe = test_sft.write_recipe(tmp_path / "sft.yaml", tiny_world, moe_model, tmp_path / "sft", extra="")
    load_script("sft").main(["--config", str(recipe), "--max_steps", "20", "--save_strategy", "no"])
    summary = json.loads((tmp_path / "sft/stage_complete.json").read_text())
    assert summary["eval_loss"] < summary["eval_loss_before"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sft", use_safetensors=True)
    assert model.config.model_type == "qwen3_moe"


def test_the_moe_checkpoint_is_saved_for_generation_with_the_balancing_loss_off(moe_model, tiny_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(moe_model, use_safetensors=True)
    assert model.config.output_router_logits is False  # the training setting is not published
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer)
    tokenizer.padding_side = "left"
    batch = tokenizer(["What is 4 + 3?", "There were 12 cats near the river. Then"], return_tensors="pt",
                      padding=True)
    with torch.no_grad():  # a padded batch through the KV cache: what failed with the loss on
        out = model.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape == (2, batch["input_ids"].shape[1] + 8)
