"""Model cards and the Hub: what a stage's output folder says about itself, and how it is published.

Every stage writes a README.md model card into its output folder: Hub metadata (base_model, datasets, license,
tags, pipeline_tag, model-index with the held-out results), the lineage (which recipe and data made each
ancestor, back to a Hub model or to a model built from a config), how it was trained and how to use it. The lineage
travels from stage to stage in `lineage.json`. A card names no local path and no token: local data appear by
file name only, local ancestors by their stage and recipe.

`push_folder` uploads a finished folder with huggingface_hub (a private repo by default, a branch per stage when
`hub_revision` is set), or in a dry run writes exactly the files it would upload, and the calls it would make, to
a folder beside it. The token comes from HF_TOKEN or `hf auth login`, never from a recipe.
"""

import json
import logging
import shutil
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from llm_recipes.recipe import REPO_ROOT

logger = logging.getLogger("llm_recipes")
LINEAGE_FILE = "lineage.json"
# What is never published: checkpoints (optimizer and RNG states), pickles, and the runner's completion marker.
NOT_UPLOADED = ["checkpoint-*/**", "checkpoint-*", "*.bin", "*.pt", "*.pth", "*.pkl", "runs/**", "stage_complete.json"]
PIPELINE_TAGS = {"reward": "text-classification"}
# Held-out measurements that go into the card's model-index: summary key -> (metric type, readable name).
CARD_METRICS = {"eval_loss": ("loss", "held-out loss"), "eval_perplexity": ("perplexity", "held-out perplexity"),
                "eval_accuracy": ("accuracy", "pair accuracy"), "eval_preference_accuracy":
                ("accuracy", "preference accuracy"), "eval_reward": ("reward", "mean reward"),
                "eval_answer_accuracy": ("accuracy", "answer accuracy")}


def is_local(name_or_path: str | None) -> bool:
    return bool(name_or_path) and Path(name_or_path).exists()


LOCAL = " (local)"
BUILDERS = ("json", "csv", "parquet", "text", "arrow")


def data_name(source: str) -> str:
    """A dataset as a card may name it: a Hub id as it is, a local file by its last two path parts and `(local)`."""
    path = source.split(" ")[0]
    if path in BUILDERS:  # files read by a builder: local data
        return f"{path} files{LOCAL}"
    if is_local(path) or path.startswith(("runs/", "/", ".")) or Path(path).suffix in (".json", ".jsonl", ".parquet"):
        return "/".join(Path(path).parts[-2:]) + LOCAL
    return path


def recipe_name(recipe: str | None) -> str | None:
    """The recipe file relative to the repository when it lives there, else its file name."""
    if not recipe:
        return None
    path = Path(recipe).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else path.name


def lineage_of(parent: str | None) -> list[dict]:
    """The ancestors of a model started from `parent`: its lineage if it is a folder of ours, a Hub model, or
    nothing for a model built from a config."""
    if not parent:
        return []
    if is_local(parent):
        lineage = Path(parent) / LINEAGE_FILE
        if lineage.is_file():
            return json.loads(lineage.read_text())
        return [{"stage": "checkpoint", "model": None, "recipe": None, "datasets": []}]
    return [{"stage": "hub model", "model": parent, "recipe": None, "datasets": []}]


def write_model_card(output_dir: str | Path, *, stage: str, parent: str | None, recipe: str | None,
                     summary: dict, details: dict, license: str, hub_model_id: str | None = None,
                     eval_results: list[EvalResult] | None = None, details_title: str = "Training") -> ModelCard:
    """Write README.md and lineage.json into `output_dir` and return the card. `details` are the settings listed
    under `details_title` (the training hyperparameters; for an export, the quantization and its cost)."""
    output_dir = Path(output_dir)
    kind = summary.get("stage", stage)  # what the script did (pretrain, sft, reward...); `stage` names the recipe
    datasets = [data_name(row["source"]) for row in summary.get("mixture", [])]
    lineage = lineage_of(parent) + [{"stage": stage, "model": hub_model_id, "recipe": recipe_name(recipe),
                                     "datasets": datasets}]
    base_model = next((entry["model"] for entry in lineage[:-1] if entry["stage"] == "hub model"), None)
    hub_datasets = sorted({d for entry in lineage for d in entry["datasets"] if not d.endswith(LOCAL)})
    name = hub_model_id or output_dir.name
    where = hub_model_id or "path/to/this/folder"
    if eval_results is None:
        eval_results = [EvalResult(task_type=PIPELINE_TAGS.get(kind, "text-generation"), dataset_type="held-out",
                                   dataset_name=f"held-out data of the {stage} stage", metric_type=metric,
                                   metric_name=label, metric_value=round(float(summary[key]), 4))
                        for key, (metric, label) in CARD_METRICS.items() if isinstance(summary.get(key), (int, float))]
    data = ModelCardData(
        model_name=name, base_model=base_model, datasets=hub_datasets or None, license=license,
        library_name="peft" if (output_dir / "adapter_config.json").is_file() else "transformers",
        pipeline_tag=PIPELINE_TAGS.get(kind, "text-generation"), tags=sorted({"llm-recipes", kind, stage}),
        eval_results=eval_results or None,
    )
    rows = ["| # | stage | recipe | data |", "|---|---|---|---|"]
    for i, entry in enumerate(lineage):
        what = entry["model"] if entry["stage"] == "hub model" else entry["recipe"] or ""
        rows.append(f"| {i} | {entry['stage']} | {what} | {', '.join(entry['datasets'])} |")
    results = [f"| {r.metric_name} | {r.metric_value} |" for r in eval_results or []]
    settings = [f"- {key}: {getattr(value, 'value', value)}" for key, value in details.items() if value is not None]
    # A reward model is a one-output sequence classifier; everything else here is a causal LM.
    auto_class = "AutoModelForSequenceClassification" if kind == "reward" else "AutoModelForCausalLM"
    loading = ("from peft import AutoPeftModelForCausalLM\n\n"
               f"model = AutoPeftModelForCausalLM.from_pretrained(\"{where}\")"
               if data.library_name == "peft" else
               f"from transformers import {auto_class}, AutoTokenizer\n\n"
               f"model = {auto_class}.from_pretrained(\"{where}\")\n"
               f"tokenizer = AutoTokenizer.from_pretrained(\"{where}\")")
    content = "\n".join([
        "---", data.to_yaml(), "---", "", f"# {name}", "",
        f"The output of the **{stage}** stage of an llm-recipes pipeline"
        + (f", from `{base_model}`." if base_model else ", from a model built from a config."), "",
        "## Lineage", "", *rows, "",
        *(["## Results on held-out data", "", "| metric | value |", "|---|---|", *results, ""] if results else []),
        f"## {details_title}", "", *settings, "",
        "## Use", "", "```python", loading, "```", "",
    ])
    card = ModelCard(content)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2) + "\n")
    card.save(output_dir / "README.md")
    return card


def check_push_settings(push_to_hub: bool, dry_run: bool, repo_id: str | None) -> None:
    """Refuse, before any compute, a push that names no repo or that is both real and a dry run."""
    from llm_recipes.recipe import RecipeError

    if (push_to_hub or dry_run) and not repo_id:
        raise RecipeError("push_to_hub / hub_dry_run: set `hub_model_id` (e.g. your-name/tiny-sft) to say where "
                          "the model goes; `hub_revision` puts it on a branch of that repo.")
    if push_to_hub and dry_run:
        raise RecipeError("hub_dry_run: leave `push_to_hub` off for a dry run (it would upload checkpoints).")


def upload_plan(folder: str | Path) -> list[str]:
    """The files of `folder` that `push_folder` uploads, relative to it."""
    from huggingface_hub.utils import filter_repo_objects

    folder = Path(folder)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    return list(filter_repo_objects(files, ignore_patterns=NOT_UPLOADED))


def push_folder(folder: str | Path, repo_id: str, *, revision: str | None = None, private: bool = True,
                commit_message: str = "Upload with llm-recipes", dry_run: bool = False) -> Path | None:
    """Upload `folder` to the Hub model repo `repo_id` (created if missing; `revision` a branch, created from main
    if missing). With `dry_run`, upload nothing: copy the files that would be uploaded to `<folder>-hub-dry-run/`
    with `hub_calls.json`, the calls that would be made, and return that folder."""
    files = upload_plan(folder)
    calls = [
        {"call": "create_repo", "repo_id": repo_id, "private": private, "exist_ok": True},
        *([{"call": "create_branch", "repo_id": repo_id, "branch": revision, "exist_ok": True}] if revision else []),
        {"call": "upload_folder", "repo_id": repo_id, "revision": revision, "commit_message": commit_message,
         "ignore_patterns": NOT_UPLOADED, "files": files},
    ]
    if dry_run:
        target = Path(f"{Path(folder).resolve()}-hub-dry-run")
        shutil.rmtree(target, ignore_errors=True)
        for name in files:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(folder) / name, target / name)
        (target.parent / f"{target.name}.hub_calls.json").write_text(json.dumps(calls, indent=2) + "\n")
        logger.info("Dry run: what a push to %s would upload is in %s (no upload).", repo_id, target)
        return target
    api = HfApi()  # the token from HF_TOKEN or the cached login, never passed through our code
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision, commit_message=commit_message,
                      ignore_patterns=NOT_UPLOADED)
    logger.info("Pushed %s files to %s%s.", len(files), repo_id, f" (branch {revision})" if revision else "")
    return None
