"""PPO on tiny models: a toy reward rises, the stage logs what practitioners watch, saves, resumes to the same
weights, and trains LoRA against its own adapter-free reference (two processes: test_multi_process.py)."""

import copy
import json
import shutil

import pytest
import torch
from conftest import load_script
from datasets import Dataset
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

from llm_recipes.ppo import PPOConfig, PPOTrainer
from llm_recipes.recipe import RecipeError, RecipeParser

WATCHED = ("objective/scores", "objective/kl", "objective/entropy", "policy/clipfrac_avg", "policy/approxkl_avg",
           "loss/value_avg", "val/explained_variance", "response_length", "rewards/answer_accuracy",
           "time/generation", "time/scoring", "time/training", "kl_coef")
TINY_LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=True)


def toy_tokenizer():
    """Ten letters and three special tokens, one word per token."""
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate("abcdefghij")}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


@pytest.mark.parametrize("value_head", ["separate", "shared"])
def test_a_reward_favouring_one_token_rises_over_ppo_steps(tmp_path, value_head):
    torch.manual_seed(0)
    tokenizer = toy_tokenizer()
    config = dict(vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1, bos_token_id=None, **TINY_LLAMA)
    policy = LlamaForCausalLM(LlamaConfig(**config))
    value_model = LlamaForSequenceClassification(LlamaConfig(**config, num_labels=1))
    if value_head == "shared":
        value_model = None
    a = tokenizer.convert_tokens_to_ids("a")

    def share_of_a(completions, completion_ids, **kwargs):
        return [sum(t == a for t in ids) / len(ids) for ids in completion_ids]

    prompts = Dataset.from_dict({"prompt": [" ".join("bcdefghij"[i % 9 : i % 9 + 3]) for i in range(64)]})
    held_out = Dataset.from_dict({"prompt": ["j i h", "g e c", "b d f", "i g e"]})  # orders never trained on
    args = PPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", disable_tqdm=True, seed=0,
                     per_device_train_batch_size=16, num_ppo_epochs=4, max_steps=20, learning_rate=3e-3,
                     max_completion_length=6, temperature=1.0, missing_eos_penalty=None, kl_coef=0.01,
                     logging_steps=1, save_strategy="no", eval_on_start=True, value_head=value_head)
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=copy.deepcopy(policy),
                         value_model=value_model, reward_funcs=[share_of_a], train_dataset=prompts,
                         eval_dataset=held_out)
    trainer.train()
    scores = [h["objective/scores"] for h in trainer.state.log_history if "objective/scores" in h]
    assert len(scores) == 20
    # Sampling at random from 13 tokens gives a share near 1/13; PPO must have learned to say "a" far more often.
    assert scores[0] < 0.2 and sum(scores[-3:]) / 3 > 0.5, scores
    kls = [h["objective/kl"] for h in trainer.state.log_history if "objective/kl" in h]
    assert kls[0] == pytest.approx(0.0, abs=1e-4) and kls[-1] > 0  # the policy moved away from its reference
    # Greedy replies to the held-out prompts, before training and after: the parent's reward is far below.
    before, after = trainer.state.log_history[0]["eval_reward"], trainer.evaluate()["eval_reward"]
    assert before < 0.2 and after > before + 0.4, (before, after)
    if value_head == "shared":  # the head learned values; the policy's weights moved by the policy loss alone
        assert trainer.model.value_head.weight.abs().sum() > 0


def test_the_shared_value_heads_values_from_generation_are_a_forward_passs():
    """value_head: shared with rollout_logprobs: the values come from generation's last hidden states, so they must
    be what one forward pass of the policy over prompt and reply gives, on every reply token; and the value loss's
    gradient reaches the head alone."""
    torch.manual_seed(0)
    tokenizer = toy_tokenizer()
    config = dict(vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1, bos_token_id=None, **TINY_LLAMA)
    prompts = Dataset.from_dict({"prompt": [" ".join("bcdefghij"[i % 9 : i % 9 + 1 + i % 3]) for i in range(16)]})
    args = PPOConfig(output_dir="unused", use_cpu=True, report_to="none", disable_tqdm=True, seed=0,
                     per_device_train_batch_size=16, max_completion_length=6, temperature=0.7, max_steps=1,
                     save_strategy="no", local_rollout_forward_batch_size=8, value_head="shared")
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=LlamaForCausalLM(LlamaConfig(**config)),
                         ref_model=LlamaForCausalLM(LlamaConfig(**config)),
                         reward_funcs=[lambda completions, **kwargs: [0.0] * len(completions)],
                         train_dataset=prompts)
    torch.nn.init.normal_(trainer.model.value_head.weight)  # not the zeros it starts at: values that differ
    rollout = trainer._rollout([trainer.train_dataset[i] for i in range(16)])
    forward = trainer._score_forward(rollout.queries, rollout.query_mask, rollout.responses, rollout.mask, 0.7)
    assert rollout.values is not None and rollout.values[rollout.mask].std() > 0.1
    torch.testing.assert_close(rollout.values[rollout.mask], forward["values"][rollout.mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(rollout.logprobs[rollout.mask], forward["logprobs"][rollout.mask], atol=1e-5, rtol=0)
    inputs = trainer._model_inputs(rollout.queries, rollout.query_mask, rollout.responses, rollout.mask)
    _, values = trainer.model(*inputs, response_length=rollout.responses.shape[1])
    values.sum().backward()
    assert trainer.model.value_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in trainer.model.policy.parameters())


def test_a_value_model_with_the_shared_head_is_refused(tmp_path):
    tokenizer = toy_tokenizer()
    config = dict(vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1, bos_token_id=None, **TINY_LLAMA)
    args = PPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", value_head="shared")
    with pytest.raises(ValueError, match="none with value_head: shared"):
        PPOTrainer(args=args, processing_class=tokenizer, model=LlamaForCausalLM(LlamaConfig(**config)),
                   ref_model=LlamaForCausalLM(LlamaConfig(**config)),
                   value_model=LlamaForSequenceClassification(LlamaConfig(**config, num_labels=1)),
                   reward_funcs=[lambda completions, **kwargs: [0.0] * len(completions)])
    with pytest.raises(ValueError, match="set one or the other"):
        PPOConfig(output_dir=str(tmp_path), use_cpu=True, value_head="shared", value_model_path="some/model")


def test_the_log_probabilities_taken_from_generation_are_the_policys_own(tmp_path):
    """rollout_logprobs: the scoring pass skips the policy, so what generation recorded must be what a forward pass
    over prompt and reply gives, at the rollout temperature, on every reply token."""
    torch.manual_seed(0)
    tokenizer = toy_tokenizer()
    config = dict(vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1, bos_token_id=None, **TINY_LLAMA)
    prompts = Dataset.from_dict({"prompt": [" ".join("bcdefghij"[i % 9 : i % 9 + 1 + i % 3]) for i in range(16)]})
    args = PPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", disable_tqdm=True, seed=0,
                     per_device_train_batch_size=16, max_completion_length=6, temperature=0.7, max_steps=1,
                     save_strategy="no", local_rollout_forward_batch_size=8)
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=LlamaForCausalLM(LlamaConfig(**config)),
                         ref_model=LlamaForCausalLM(LlamaConfig(**config)),
                         value_model=LlamaForSequenceClassification(LlamaConfig(**config, num_labels=1)),
                         reward_funcs=[lambda completions, **kwargs: [0.0] * len(completions)],
                         train_dataset=prompts)
    rollout = trainer._rollout([trainer.train_dataset[i] for i in range(16)])  # prompts of 1 to 3 tokens: padded
    forward = trainer._score_forward(rollout.queries, rollout.query_mask, rollout.responses, rollout.mask, 0.7)
    assert rollout.mask.sum() > 16
    torch.testing.assert_close(rollout.logprobs[rollout.mask], forward["logprobs"][rollout.mask], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tiny_policy(tiny_tokenizer, tmp_path_factory):
    """A random tiny Llama with the tiny world's tokenizer and its ChatML template, saved like an SFT model."""
    out = tmp_path_factory.mktemp("policy")
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None, **TINY_LLAMA)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_recipe(path, tiny_world, policy, output_dir, max_steps=4, extra=""):
    rl = tiny_world / "rl"
    path.write_text(
        f"output_dir: {output_dir}\nmodel_name_or_path: {policy}\n"
        f"dataset_mixture:\n  datasets: [{{path: {rl}/train.jsonl, columns: [prompt, answer]}}]\n"
        f"  eval_datasets: [{{path: {rl}/test.jsonl, columns: [prompt, answer]}}]\n"
        f"reward_funcs: [answer_accuracy, answer_format]\nreward_weights: [1.0, 0.5]\n"
        f"max_completion_length: 8\ntemperature: 1.0\nper_device_train_batch_size: 8\nnum_mini_batches: 2\n"
        f"num_ppo_epochs: 2\nlearning_rate: 1.0e-3\nadaptive_kl: true\nkl_target: 1.0\nkl_horizon: 100\n"
        f"use_cpu: true\nseed: 5\nmax_steps: {max_steps}\neval_on_start: true\nlogging_steps: 1\n"
        f"save_strategy: steps\nsave_steps: 2\nreport_to: none\ndisable_tqdm: true\n{extra}"
    )
    return path


@pytest.fixture(scope="module")
def ppo_run(tiny_world, tiny_policy, tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo")
    recipe = write_recipe(out / "recipe.yaml", tiny_world, tiny_policy, out / "model")
    load_script("ppo").main(["--config", str(recipe)])
    return out / "model"


def test_logs_hold_what_practitioners_watch(ppo_run):
    history = json.loads((ppo_run / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "objective/kl" in h]
    assert len(steps) == 4
    for key in WATCHED:
        assert all(key in h for h in steps), key


def test_summary_reports_held_out_rewards_before_and_after_and_where_the_time_went(ppo_run):
    summary = json.loads((ppo_run / "stage_complete.json").read_text())
    for key in ("eval_answer_accuracy", "eval_answer_format", "eval_reward", "eval_kl", "eval_response_length"):
        assert key in summary and key + "_before" in summary, key
    assert summary["eval_kl_before"] == pytest.approx(0.0, abs=1e-5)  # the policy is its reference at the start
    assert summary["eval_kl"] > 0
    assert summary["seconds_per_step"] >= (summary["seconds_per_step_generation"]
                                           + summary["seconds_per_step_training"])
    assert summary["processes"] == 1


def test_output_is_a_plain_causal_lm_and_checkpoints_hold_the_value_model(ppo_run):
    model = AutoModelForCausalLM.from_pretrained(ppo_run)
    assert model.config.num_hidden_layers == 2
    assert not (ppo_run / "value_model").exists() and not list(ppo_run.glob("*.bin"))
    for name in ("model.safetensors", "value_model/model.safetensors", "ppo_state.json", "optimizer.pt"):
        assert (ppo_run / "checkpoint-2" / name).is_file(), name


def test_the_shared_value_head_is_checkpointed_and_a_resumed_run_ends_with_identical_weights(
        tiny_world, tiny_policy, tmp_path):
    shared = "value_head: shared\n"
    whole = write_recipe(tmp_path / "whole.yaml", tiny_world, tiny_policy, tmp_path / "whole", extra=shared)
    load_script("ppo").main(["--config", str(whole)])
    checkpoint = tmp_path / "whole" / "checkpoint-2"
    assert (checkpoint / "value_head.safetensors").is_file() and not (checkpoint / "value_model").exists()
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(checkpoint, resumed / "checkpoint-2")
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_world, tiny_policy, resumed, extra=shared)
    load_script("ppo").main(["--config", str(recipe)])
    for name in ("model.safetensors", "checkpoint-4/value_head.safetensors"):
        uninterrupted, continued = load_file(tmp_path / "whole" / name), load_file(resumed / name)
        for key, weight in uninterrupted.items():
            assert torch.equal(weight, continued[key]), (name, key)
    assert load_file(resumed / "checkpoint-4/value_head.safetensors")["weight"].abs().sum() > 0


def test_resumed_run_ends_with_identical_weights(ppo_run, tiny_world, tiny_policy, tmp_path):
    # A run killed after its checkpoint at step 2, launched again.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(ppo_run / "checkpoint-2", resumed / "checkpoint-2")
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_world, tiny_policy, resumed)
    load_script("ppo").main(["--config", str(recipe)])
    uninterrupted, continued = load_file(ppo_run / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name, weight in uninterrupted.items():
        assert torch.equal(weight, continued[name]), name
    kl_coef = [json.loads((d / "checkpoint-4" / "ppo_state.json").read_text())["kl_coef"] for d in (ppo_run, resumed)]
    assert kl_coef[0] == kl_coef[1] != 0.05  # the adaptive coefficient was restored, then moved on identically


def test_lora_policy_trains_against_itself_with_adapters_disabled(tiny_world, tiny_policy, tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_world, tiny_policy, tmp_path / "lora", max_steps=2,
                          extra="use_peft: true\nlora_r: 4\nlora_alpha: 8\nlora_target_modules: all-linear\n"
                                "save_strategy: 'no'\n")
    load_script("ppo").main(["--config", str(recipe)])
    summary = json.loads((tmp_path / "lora" / "stage_complete.json").read_text())
    assert (tmp_path / "lora" / "adapter_config.json").is_file()  # only the adapter is saved
    assert summary["eval_kl_before"] == pytest.approx(0.0, abs=1e-6) and summary["eval_kl"] > 0
    assert summary["trainable_parameters"] < 60_000  # the adapters and the value model, not the policy


def test_an_unknown_reward_function_is_a_recipe_error(tiny_world, tiny_policy, tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_world, tiny_policy, tmp_path / "out")
    with pytest.raises(RecipeError, match="Did you mean 'answer_format'"):
        RecipeParser(load_script("ppo").ARGUMENTS).parse_or_raise(
            ["--config", str(recipe), "--reward_funcs", "answer_accuracy", "answer_formt"])


def test_a_reward_function_without_its_column_is_named(tiny_world, tiny_policy, tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_world, tiny_policy, tmp_path / "out")
    recipe.write_text(recipe.read_text().replace(", answer]", "]"))
    with pytest.raises(RecipeError, match="'answer_accuracy' reads the column 'answer'"):
        load_script("ppo").main(["--config", str(recipe)])
