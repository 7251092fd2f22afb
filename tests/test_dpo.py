"""DPO makes a model prefer chosen replies against a frozen reference, fully or with a LoRA adapter."""

import json

import pytest
import torch
from conftest import load_script, save_small_llama
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_recipes.data import DatasetFormatError

PREFERENCE_COLUMNS = "columns: [prompt, chosen, rejected]"


@pytest.fixture(scope="module")
def parent(tiny_tokenizer, tmp_path_factory):
    """A small causal LM checkpoint with the tiny tokenizer and its ChatML template."""
    return save_small_llama(tiny_tokenizer, tmp_path_factory.mktemp("parent"))


@pytest.fixture(scope="module")
def pairs(tiny_world, tmp_path_factory):
    """96 preference pairs of the tiny world, trained on and measured on (DPO memorizes them in a few epochs)."""
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    lines = (tiny_world / "preferences" / "train.jsonl").read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:96]))
    return path


def write_recipe(path, parent, pairs, output_dir, extra=""):
    """Trains on `pairs` and measures on the same pairs."""
    path.write_text(
        f"output_dir: {output_dir}\nmodel_name_or_path: {parent}\nmax_length: 256\nbeta: 0.1\n"
        f"dataset_mixture:\n  datasets:\n    - {{path: {pairs}, {PREFERENCE_COLUMNS}}}\n"
        f"  eval_datasets:\n    - {{path: {pairs}, {PREFERENCE_COLUMNS}}}\n"
        "use_cpu: true\nbf16: false\ngradient_checkpointing: false\nseed: 0\nmax_steps: 40\n"
        "per_device_train_batch_size: 16\nlearning_rate: 2.0e-3\nwarmup_steps: 4\neval_strategy: 'no'\n"
        "eval_on_start: true\nper_device_eval_batch_size: 96\nlogging_steps: 10\nsave_strategy: 'no'\n"
        f"report_to: none\ndisable_tqdm: true\n{extra}"
    )
    return path


def run_dpo(recipe):
    """Run the stage; return the DPOTrainer it built, to look at the reference model."""
    dpo = load_script("dpo")
    built = []

    class RecordingDPOTrainer(dpo.DPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dpo, "DPOTrainer", RecordingDPOTrainer)
        dpo.main(["--config", str(recipe)])
    return built[0]


@pytest.fixture(scope="module")
def dpo_run(parent, pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo")
    recipe = write_recipe(out / "recipe.yaml", parent, pairs, out / "model")
    return out / "model", run_dpo(recipe)


@pytest.fixture(scope="module")
def lora_run(parent, pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo_lora")
    recipe = write_recipe(out / "recipe.yaml", parent, pairs, out / "adapter",
                          extra="use_peft: true\nlora_r: 16\nlora_alpha: 32\nlora_target_modules: all-linear\n")
    # Measured on two named sets, one file's rows split by kind with `where`.
    named = (f"  eval_datasets:\n    math: {{path: {pairs}, where: {{kind: math}}, {PREFERENCE_COLUMNS}}}\n"
             f"    other: {{path: {pairs}, where: {{kind: [tool, forbidden, benign]}}, {PREFERENCE_COLUMNS}}}\n")
    recipe.write_text(recipe.read_text().replace("learning_rate: 2.0e-3", "learning_rate: 1.0e-2")
                      .replace(f"  eval_datasets:\n    - {{path: {pairs}, {PREFERENCE_COLUMNS}}}\n", named))
    return out / "adapter", run_dpo(recipe)


def test_dpo_raises_the_preference_for_chosen_replies(dpo_run):
    summary = json.loads((dpo_run[0] / "stage_complete.json").read_text())
    assert summary["eval_pairs"] == 96
    # The parent is its own reference: every implicit reward starts at 0.
    assert summary["eval_rewards/accuracies_before"] == 0 and summary["eval_rewards/margins_before"] == 0
    assert summary["eval_rewards/accuracies"] >= 0.8
    assert summary["eval_rewards/margins"] > 1.0
    # The model's own preference, compared with its parent's.
    assert summary["eval_preference_accuracy"] > summary["eval_preference_accuracy_before"] + 0.1
    assert summary["eval_logp_margin"] > summary["eval_logp_margin_before"] + 10


def test_reference_is_a_frozen_copy_of_the_parent_left_untouched(dpo_run, parent):
    output, trainer = dpo_run
    parent_weights = load_file(parent / "model.safetensors")
    reference = dict(trainer.ref_model.named_parameters())
    assert trainer.ref_model is not trainer.model
    assert not any(p.requires_grad for p in reference.values())
    for name, weight in parent_weights.items():
        assert torch.equal(reference[name], weight), name
    trained = load_file(output / "model.safetensors")
    assert not torch.equal(trained["model.layers.0.mlp.up_proj.weight"],
                           parent_weights["model.layers.0.mlp.up_proj.weight"])


def completion_log_prob_margins(model, tokenizer, pairs) -> list[float]:
    """log π(chosen | prompt) − log π(rejected | prompt) for each pair, through the chat template."""
    margins = []
    for pair in pairs:
        prompt = tokenizer.apply_chat_template(pair["prompt"], add_generation_prompt=True, tokenize=True)["input_ids"]
        log_probs = []
        for reply in (pair["chosen"], pair["rejected"]):
            ids = tokenizer.apply_chat_template(pair["prompt"] + reply, tokenize=True)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
            per_token = logits.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
            log_probs.append(per_token[len(prompt) - 1:].sum().item())
        margins.append(log_probs[0] - log_probs[1])
    return margins


def test_lora_adapter_reloads_with_peft_and_is_the_model_measured(lora_run, parent, pairs):
    from peft import PeftModel

    adapter, trainer = lora_run
    assert trainer.ref_model is None  # the reference is the policy with its adapter disabled
    assert (adapter / "adapter_model.safetensors").exists() and not (adapter / "model.safetensors").exists()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(parent), adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    examples = [json.loads(line) for line in pairs.read_text().splitlines()]
    margins = completion_log_prob_margins(model, tokenizer, examples)
    with model.disable_adapter():
        parent_margins = completion_log_prob_margins(model, tokenizer, examples)

    summary = json.loads((adapter / "stage_complete.json").read_text())
    accuracy, parent_accuracy = (sum(m > 0 for m in ms) / len(ms) for ms in (margins, parent_margins))
    assert accuracy == pytest.approx(summary["eval_preference_accuracy"], abs=1 / len(examples))
    assert parent_accuracy == pytest.approx(summary["eval_preference_accuracy_before"], abs=1 / len(examples))
    assert accuracy > parent_accuracy + 0.1
    # Each named set's accuracy is that of its own pairs.
    assert summary["eval_pairs_per_set"] == {"math": sum(e["kind"] == "math" for e in examples),
                                             "other": sum(e["kind"] != "math" for e in examples)}
    for name, of_set in (("math", lambda e: e["kind"] == "math"), ("other", lambda e: e["kind"] != "math")):
        in_set = [m for m, e in zip(margins, examples) if of_set(e)]
        assert summary[f"eval_{name}_preference_accuracy"] == pytest.approx(sum(m > 0 for m in in_set) / len(in_set),
                                                                            abs=1 / len(in_set))


def test_pairs_without_rejected_are_named_before_any_model_loads(tiny_world, tmp_path):
    broken = tmp_path / "pairs.jsonl"
    held_out = (tiny_world / "preferences" / "test_verifiable.jsonl").read_text().splitlines()
    broken.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "rejected"}) + "\n"
                              for line in held_out))
    recipe = write_recipe(tmp_path / "recipe.yaml", tmp_path / "no_such_model", broken, tmp_path / "out")
    recipe.write_text(recipe.read_text().replace(f", {PREFERENCE_COLUMNS}", ""))
    with pytest.raises(DatasetFormatError, match=f"Dataset '{broken}' has no column 'rejected'"):
        load_script("dpo").main(["--config", str(recipe)])
    assert not (tmp_path / "out").exists()


def test_dry_run_counts_the_frozen_reference_and_trains_nothing(parent, pairs, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", parent, pairs, tmp_path / "out")
    load_script("dpo").main(["--config", str(recipe), "--dry_run"])
    full = capsys.readouterr().out
    assert "per optimizer step:      16 pairs" in full and "total steps:             40" in full
    assert ", reference " in full  # a frozen copy of the parent
    load_script("dpo").main(["--config", str(recipe), "--dry_run", "--use_peft", "true"])
    lora = capsys.readouterr().out
    assert ", reference " not in lora  # the reference is the policy with its adapters disabled
    assert not (tmp_path / "out").exists()
