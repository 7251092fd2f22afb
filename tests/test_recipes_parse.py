"""Every recipe in the repository parses through its stage's parser, so that none can rot unnoticed."""

import functools
from pathlib import Path

import pytest
from conftest import REPO_ROOT, load_script

from llm_recipes.data import DatasetMixture, check_declared_columns
from llm_recipes.model import model_config_from_recipe
from llm_recipes.pipeline import Pipeline
from llm_recipes.recipe import RecipeParser, repo_path

# Recipe file name -> the script that runs it, where the two names differ.
SCRIPT_FOR = {"tokenizer": "train_tokenizer", "data": "make_tiny_data", "cpt": "pretrain", "long_context": "pretrain",
              "eval": "evaluate", "eval_long": "evaluate", "eval_base": "evaluate", "sft_lora": "sft",
              "sft_qlora": "sft", "dpo_qlora": "dpo", "grpo_safety": "grpo", "eval_math": "evaluate",
              "student_pretrain": "pretrain", "student_sft": "sft", "sft_constitutional": "sft",
              "distill_on_policy": "distill", "distill_off_policy": "distill",
              "constitutional_revisions": "generate_preferences", "pretrain_moe": "pretrain"}
# Pipelines, and the overrides files that shorten one (CI's is tested below), are not recipes.
NOT_RECIPES = ("pipeline.yaml", "ci_short.yaml")
RECIPES = sorted(p for p in (REPO_ROOT / "recipes").rglob("*.yaml") if p.name not in NOT_RECIPES)
PIPELINES = sorted((REPO_ROOT / "recipes").rglob("pipeline.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO_ROOT / "recipes")))
def test_recipe_parses_and_declares_the_columns_its_stage_needs(recipe: Path):
    script = load_script(SCRIPT_FOR.get(recipe.stem, recipe.stem))
    # GPU recipes set bf16, which TrainingArguments only accepts where a GPU is seen; parse them as on a CPU.
    overrides = ["--use_cpu", "true"] if "use_cpu" in RecipeParser(script.ARGUMENTS)._actions_by_key() else []
    parsed = RecipeParser(script.ARGUMENTS).parse_or_raise(["--config", str(recipe), *overrides])
    args = parsed[0]
    if getattr(args, "dataset_mixture", None) is not None:
        check_declared_columns(DatasetMixture.from_recipe(args.dataset_mixture), script.DATASET_FORMAT)
    if getattr(args, "model_config", None):
        model_config_from_recipe(args.model_config, tokenizer=None)
    if getattr(args, "chat_template", None):
        assert Path(repo_path(args.chat_template)).is_file()


@pytest.mark.parametrize("pipeline", PIPELINES, ids=lambda p: str(p.relative_to(REPO_ROOT / "recipes")))
def test_pipeline_names_existing_scripts_and_recipes(pipeline: Path):
    parsed = Pipeline.from_yaml(pipeline)
    for stage in parsed.stages:
        assert (REPO_ROOT / stage.script).is_file(), stage.script
        assert stage.config is None or (REPO_ROOT / stage.config).is_file(), stage.config
    assert parsed.accelerate_config is None or (REPO_ROOT / parsed.accelerate_config).is_file()


def test_ci_short_chain_overrides_parse_in_every_stage_they_shorten():
    """CI's short chain is the tiny pipeline with recipes/tiny/ci_short.yaml merged in: each stage's recipe with its
    overridden args must parse through that stage's script, as the runner will launch it."""
    pipeline = Pipeline.from_yaml(REPO_ROOT / "recipes/tiny/pipeline.yaml")
    pipeline.with_overrides(REPO_ROOT / "recipes/tiny/ci_short.yaml")
    for stage in pipeline.stages:
        if stage.config is None or not stage.args:
            continue
        script = load_script(Path(stage.script).stem)
        args = [token for key, value in stage.args.items() if "{" not in str(value)
                for token in (f"--{key}", *map(str, value if isinstance(value, list) else [value]))]
        RecipeParser(script.ARGUMENTS).parse_or_raise(["--config", str(REPO_ROOT / stage.config), *args])


@functools.cache
def lm_eval_index(include_path: str | None, with_registry: bool):
    """lm-eval indexes its whole registry (~15 s) for each TaskManager; build each index once."""
    from lm_eval.tasks import TaskManager

    include = repo_path(include_path) if include_path else None
    return TaskManager(include_path=include, include_defaults=with_registry)


def task_manager(include_path: str | None, tasks: list[str]):
    """As scripts/evaluate.py finds tasks (llm_recipes.evaluation.find_tasks): in the include path alone when every
    task is there, else with lm-eval's registry too."""
    if include_path and all(lm_eval_index(include_path, False).match_tasks([task]) for task in tasks):
        return lm_eval_index(include_path, False)
    return lm_eval_index(include_path, True)


@pytest.mark.parametrize("recipe", sorted((REPO_ROOT / "recipes").rglob("eval*.yaml")),
                         ids=lambda p: str(p.relative_to(REPO_ROOT / "recipes")))
def test_eval_recipe_tasks_resolve_in_lm_eval_registry_offline(recipe: Path):
    (args,) = RecipeParser(load_script("evaluate").ARGUMENTS).parse_or_raise(["--config", str(recipe)])
    manager = task_manager(args.include_path, args.tasks + args.chat_tasks)
    for task in args.tasks + args.chat_tasks:
        assert manager.match_tasks([task]) == [task], f"{recipe}: task {task} is not in lm-eval's registry"


@pytest.mark.parametrize("recipe", sorted((REPO_ROOT / "recipes").rglob("export.yaml")),
                         ids=lambda p: str(p.relative_to(REPO_ROOT / "recipes")))
def test_export_recipe_scores_a_task_in_lm_eval_registry_offline(recipe: Path):
    (args,) = RecipeParser(load_script("export").ARGUMENTS).parse_or_raise(["--config", str(recipe)])
    assert task_manager(args.include_path, [args.eval_task]).match_tasks([args.eval_task]) == [args.eval_task]
