"""Evaluation with lm-eval's Python API on our own tasks (tasks/) or lm-eval's registry."""

from llm_recipes.recipe import repo_path


def lm_eval_scores(
    model_path: str,
    tasks: list[str],
    include_path: str = "tasks/tiny",
    batch_size: int | str = 16,
    max_length: int | None = None,
    limit: int | None = None,
    apply_chat_template: bool = False,
) -> dict:
    """Run `tasks` on a local checkpoint with `lm_eval.simple_evaluate` and return its `results` mapping
    (task -> metric -> value, standard errors included)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    model_args = {"pretrained": model_path, "dtype": "float32", "trust_remote_code": False}
    if max_length:
        model_args["max_length"] = max_length
    output = simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=tasks,
        task_manager=TaskManager(include_path=repo_path(include_path)),
        batch_size=batch_size,
        device="cpu",
        limit=limit,
        apply_chat_template=apply_chat_template,
        log_samples=False,
    )
    return output["results"]
