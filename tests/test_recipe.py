"""Recipes are checked, key by key, before anything is loaded."""

from dataclasses import dataclass, field

import pytest
from transformers import TrainingArguments

from llm_recipes.recipe import RecipeError, RecipeParser, derive_gradient_accumulation


@dataclass
class ToyArguments:
    dataset_mixture: dict | None = field(default=None, metadata={"help": "datasets"})
    max_seq_length: int = field(default=128, metadata={"help": "tokens per sequence"})


def parse(tmp_path, recipe: str, *overrides: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe)
    parser = RecipeParser((ToyArguments, TrainingArguments))
    return parser.parse_or_raise(["--config", str(path), *overrides])


def test_recipe_values_fill_the_dataclasses(tmp_path):
    toy, training = parse(tmp_path, "max_seq_length: 64\nlearning_rate: 0.01\noutput_dir: out\nuse_cpu: true\n")
    assert toy.max_seq_length == 64
    assert training.learning_rate == 0.01


def test_command_line_overrides_the_recipe(tmp_path):
    toy, training = parse(tmp_path, "learning_rate: 0.01\nuse_cpu: true\n", "--learning_rate", "0.5")
    assert training.learning_rate == 0.5


def test_command_line_reaches_a_key_inside_a_mapping(tmp_path):
    recipe = "dataset_mixture:\n  datasets: [a.jsonl]\n  max_examples: 1000\nuse_cpu: true\n"
    toy, _ = parse(tmp_path, recipe, "--dataset_mixture.max_examples", "64", "--dataset_mixture.seed=3")
    assert toy.dataset_mixture == {"datasets": ["a.jsonl"], "max_examples": 64, "seed": 3}


def test_a_nested_override_of_a_key_that_is_no_mapping_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="'max_seq_length' is not a mapping"):
        parse(tmp_path, "use_cpu: true\n", "--max_seq_length.tokens", "3")


def test_unknown_recipe_key_names_key_file_and_closest_valid_key(tmp_path):
    with pytest.raises(RecipeError) as error:
        parse(tmp_path, "learnig_rate: 0.01\n")
    message = str(error.value)
    assert "'learnig_rate'" in message and "recipe.yaml" in message and "Did you mean 'learning_rate'" in message


def test_unknown_command_line_key_is_refused_not_abbreviated(tmp_path):
    # argparse would silently take --max_seq as an abbreviation of --max_seq_length.
    with pytest.raises(RecipeError, match="unknown key 'max_seq'.*max_seq_length"):
        parse(tmp_path, "use_cpu: true\n", "--max_seq", "3")


@pytest.mark.parametrize(
    "line, expected",
    [
        ("max_seq_length: lots", "expects an integer"),
        ("learning_rate: fast", "expects a number"),
        ("use_cpu: maybe", "expects true or false"),
        ("lr_scheduler_type: cosinus", "expects one of"),
    ],
)
def test_bad_value_names_the_key_and_what_it_expects(tmp_path, line, expected):
    with pytest.raises(RecipeError, match=expected) as error:
        parse(tmp_path, line + "\n")
    assert repr(line.split(":")[0]) in str(error.value)


def test_env_block_sets_environment_variables(tmp_path, monkeypatch):
    monkeypatch.delenv("LLM_RECIPES_TEST_VAR", raising=False)
    parse(tmp_path, "env:\n  LLM_RECIPES_TEST_VAR: hello\nuse_cpu: true\n")
    import os

    assert os.environ["LLM_RECIPES_TEST_VAR"] == "hello"


def test_a_token_in_a_recipe_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="HF_TOKEN"):
        parse(tmp_path, "hub_token: hf_secret\n")


def test_missing_recipe_file_is_a_clear_error(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        RecipeParser(ToyArguments).parse_or_raise(["--config", str(tmp_path / "nope.yaml")])


def test_script_exits_with_one_line_before_loading_anything(tmp_path, repo_root):
    import subprocess
    import sys

    recipe = tmp_path / "bad.yaml"
    recipe.write_text("output_dir: out\nwarmup_step: 3\n")
    result = subprocess.run(
        [sys.executable, str(repo_root / "scripts" / "pretrain.py"), "--config", str(recipe)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "Did you mean 'warmup_steps'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_key_two_dataclasses_define_reaches_both(tmp_path):
    # Our StageArguments and every TRL config define trust_remote_code.
    from trl import SFTConfig

    from llm_recipes.stage import StageArguments

    path = tmp_path / "recipe.yaml"
    path.write_text("trust_remote_code: true\nuse_cpu: true\noutput_dir: out\n")
    stage_args, sft_args = RecipeParser((StageArguments, SFTConfig)).parse_or_raise(["--config", str(path)])
    assert stage_args.trust_remote_code is True and sft_args.trust_remote_code is True


@dataclass
class BatchArguments:
    global_batch_size: int | None = field(default=None, metadata={"help": "examples per optimizer step"})


def test_global_batch_size_in_a_recipe_sets_gradient_accumulation(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("use_cpu: true\nglobal_batch_size: 64\nper_device_train_batch_size: 8\n")
    training = RecipeParser((BatchArguments, TrainingArguments)).parse_or_raise(["--config", str(path)])[1]
    assert training.gradient_accumulation_steps == 8


def accumulation(monkeypatch, processes: int, **values) -> int:
    monkeypatch.setenv("WORLD_SIZE", str(processes))  # what `accelerate launch` sets in each process
    values = {"gradient_accumulation_steps": 1, **values}
    derive_gradient_accumulation(values)
    return values["gradient_accumulation_steps"]


@pytest.mark.parametrize("processes, steps", [(1, 8), (2, 4), (8, 1)])
def test_global_batch_size_gives_the_same_optimizer_step_on_any_number_of_processes(monkeypatch, processes, steps):
    assert accumulation(monkeypatch, processes, global_batch_size=64, per_device_train_batch_size=8) == steps


def test_a_global_batch_that_the_devices_cannot_split_is_refused(monkeypatch):
    with pytest.raises(RecipeError, match=r"64 is not a multiple of .* \(8 x 16 = 128\)"):
        accumulation(monkeypatch, 16, global_batch_size=64, per_device_train_batch_size=8)


def test_global_batch_and_a_contradicting_accumulation_are_refused(monkeypatch):
    with pytest.raises(RecipeError, match="needs gradient_accumulation_steps 8, but the recipe sets 2"):
        accumulation(monkeypatch, 1, global_batch_size=64, per_device_train_batch_size=8,
                     gradient_accumulation_steps=2)


ALIGNMENT_HANDBOOK_SFT = """\
model_name_or_path: mistralai/Mistral-7B-v0.1
torch_dtype: bfloat16
dataset_mixture:
  datasets:
    - id: HuggingFaceH4/ultrachat_200k
      config: default
      split: train_sft
      columns: [messages]
      weight: 1.0
  seed: 0
bf16: true
eval_strategy: epoch
gradient_accumulation_steps: 2
learning_rate: 2.0e-05
lr_scheduler_type: cosine
max_seq_length: 2048
num_train_epochs: 1
output_dir: data/zephyr-7b-sft-full
overwrite_output_dir: true
per_device_train_batch_size: 16
seed: 42
warmup_ratio: 0.1
"""

ALIGNMENT_HANDBOOK_DPO = """\
model_name_or_path: alignment-handbook/zephyr-7b-sft-full
torch_dtype: bfloat16
dataset_mixture:
  datasets:
    - {id: HuggingFaceH4/ultrafeedback_binarized, config: default, split: train_prefs, columns: [chosen, rejected]}
beta: 0.01
learning_rate: 5.0e-7
max_length: 1024
max_prompt_length: 512
output_dir: data/zephyr-7b-dpo-full
warmup_ratio: 0.1
"""


@pytest.mark.parametrize("stage, recipe, messages", [
    ("sft", ALIGNMENT_HANDBOOK_SFT, ["'torch_dtype'. Use 'dtype'", "'max_seq_length'. Use 'max_length'",
                                     "'overwrite_output_dir' is gone", "'warmup_ratio'. Use 'warmup_steps'"]),
    ("dpo", ALIGNMENT_HANDBOOK_DPO, ["'torch_dtype'. Use 'dtype'", "'max_prompt_length' is gone",
                                     "'warmup_ratio'. Use 'warmup_steps'"]),
])
def test_an_alignment_handbook_recipe_gets_every_renamed_key_named_at_once(stage, recipe, messages, tmp_path):
    from conftest import load_script

    path = tmp_path / "recipe.yaml"
    path.write_text(recipe)
    with pytest.raises(RecipeError) as error:
        RecipeParser(load_script(stage).ARGUMENTS).parse_or_raise(["--config", str(path)])
    lines = str(error.value).splitlines()
    assert lines[0] == f"{len(messages)} problems in the recipe:"
    for message, line in zip(messages, lines[1:], strict=True):
        assert line.startswith(f"{path}: ") and message in line
    # Once the keys are renamed, the recipe parses, the mixture's `id` and `config` included.
    fixed = recipe.replace("torch_dtype", "dtype").replace("max_seq_length", "max_length")
    fixed = "\n".join(line for line in fixed.splitlines()
                      if not line.startswith(("overwrite_output_dir", "max_prompt_length", "warmup_ratio")))
    path.write_text(fixed.replace("bf16: true", "") + "\nwarmup_steps: 0.1\nuse_cpu: true\n")  # this machine: CPU
    args = RecipeParser(load_script(stage).ARGUMENTS).parse_or_raise(["--config", str(path)])[0]
    from llm_recipes.data import DatasetMixture

    source = DatasetMixture.from_recipe(args.dataset_mixture).datasets[0]
    assert source.path.startswith("HuggingFaceH4/") and source.name == "default"
