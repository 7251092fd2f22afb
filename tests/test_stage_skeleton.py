"""The stage skeleton's policies (llm_recipes/stage.py): what a stage declares in its StageSpec is enforced for every
training stage alike, before any data, tokenizer or model is loaded."""

import pytest
from conftest import REPO_ROOT, load_script

from llm_recipes import stage
from llm_recipes.evaluation import LmEvalCallback
from llm_recipes.recipe import RecipeError, RecipeParser

TRAINING_STAGES = ("pretrain", "sft", "reward", "dpo", "ppo", "grpo")
RECIPES = {"pretrain": "cpt", "sft": "sft", "reward": "reward", "dpo": "dpo", "ppo": "ppo", "grpo": "grpo"}


def spec_of(name: str) -> stage.StageSpec:
    return load_script(name).SPEC


def recipe_args(name: str, tmp_path, *overrides) -> list[str]:
    # A model folder that does not exist: a check that ran after loading would fail with an OSError instead.
    return ["--config", str(REPO_ROOT / "recipes/tiny" / f"{RECIPES[name]}.yaml"),
            "--output_dir", str(tmp_path / "out"), "--model_name_or_path", str(tmp_path / "no_such_model"), *overrides]


class StopBeforeTraining(Exception):
    pass


class RecordingTrainer:
    """Stands in for a Trainer: records the callbacks the skeleton adds, and stops where training would start."""

    def __init__(self):
        import torch

        self.callbacks, self.model = [], torch.nn.Linear(2, 1)

    def add_callback(self, callback):
        self.callbacks.append(callback)

    def train(self, resume_from_checkpoint=None):
        raise StopBeforeTraining


@pytest.mark.parametrize("name", TRAINING_STAGES)
def test_every_training_script_declares_its_recipe_and_data_format_in_its_spec(name):
    script = load_script(name)
    assert script.SPEC.name == name
    assert script.SPEC.arguments == script.ARGUMENTS and script.SPEC.dataset_format == script.DATASET_FORMAT
    assert issubclass(script.ARGUMENTS[0], stage.StageArguments)


@pytest.mark.parametrize("name", [n for n in TRAINING_STAGES if spec_of(n).no_lm_eval is None])
def test_every_stage_that_accepts_lm_eval_tasks_scores_them_during_training(name, tmp_path):
    spec = spec_of(name)
    parsed = RecipeParser(spec.arguments).parse_or_raise(
        recipe_args(name, tmp_path, "--lm_eval_tasks", "tiny_multiple_choice", "--lm_eval_limit", "2"))
    trainer = RecordingTrainer()
    with pytest.raises(StopBeforeTraining):
        stage.train(trainer, stage.Run(spec, parsed))
    (callback,) = [c for c in trainer.callbacks if isinstance(c, LmEvalCallback)]
    assert callback.tasks == ["tiny_multiple_choice"] and callback.limit == 2


@pytest.mark.parametrize("name", [n for n in TRAINING_STAGES if spec_of(n).no_lm_eval is not None])
def test_a_stage_that_cannot_score_lm_eval_tasks_refuses_them_before_loading(name, tmp_path):
    with pytest.raises(RecipeError, match="lm_eval_tasks: "):
        load_script(name).main(recipe_args(name, tmp_path, "--lm_eval_tasks", "tiny_multiple_choice"))


@pytest.mark.parametrize("name", [n for n in TRAINING_STAGES if not spec_of(n).named_eval_sets])
def test_a_stage_with_one_held_out_set_refuses_named_sets(name, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model_name_or_path: {tmp_path / 'no_such_model'}\noutput_dir: {tmp_path / 'out'}\n"
                      "use_cpu: true\ndataset_mixture:\n  datasets: [{path: train.jsonl}]\n"
                      "  eval_datasets: {first: {path: first.jsonl}, second: {path: second.jsonl}}\n")
    with pytest.raises(RecipeError, match=f"dataset_mixture.eval_datasets: {name} reports one held-out set"):
        load_script(name).main(["--config", str(recipe)])


@pytest.mark.parametrize("name", [n for n in TRAINING_STAGES if not spec_of(n).quantized_base])
def test_a_stage_without_qlora_refuses_quantized_base_weights(name, tmp_path):
    with pytest.raises(RecipeError, match="load_in_4bit / load_in_8bit"):
        load_script(name).main(recipe_args(name, tmp_path, "--load_in_8bit", "true"))


def test_pretraining_refuses_a_streamed_mixture(tmp_path):
    with pytest.raises(RecipeError, match="dataset_mixture.streaming: pretrain needs a map-style dataset"):
        load_script("pretrain").main(recipe_args("pretrain", tmp_path, "--dataset_mixture.streaming", "true"))


@pytest.mark.parametrize("name", [n for n in TRAINING_STAGES if spec_of(n).starts_from])
def test_a_stage_that_starts_from_a_checkpoint_asks_for_one(name, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    lines = (REPO_ROOT / "recipes/tiny" / f"{RECIPES[name]}.yaml").read_text().splitlines(keepends=True)
    recipe.write_text("".join(line for line in lines if not line.startswith("model_name_or_path:")))
    with pytest.raises(RecipeError, match=f"Set model_name_or_path: {name} starts from"):
        load_script(name).main(["--config", str(recipe), "--output_dir", str(tmp_path / "out")])


def test_a_multi_process_launch_without_a_global_batch_is_refused(monkeypatch):
    from types import SimpleNamespace

    from llm_recipes import preflight

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # processes on this machine: not what is being tested
    launch = SimpleNamespace(use_cpu=True, fsdp="", world_size=2, per_device_train_batch_size=8,
                             gradient_accumulation_steps=1, bf16=False)
    with pytest.raises(RecipeError, match="global_batch_size: this launch runs 2 processes"):
        preflight.check_launch(launch, global_batch_size=None)
    preflight.check_launch(launch, global_batch_size=16)  # the recipe says what the global batch is: accepted
