"""Distillation: a student learns from a teacher's answers (off-policy) or from the teacher's scores of its own
answers (on-policy), with the student and teacher sharing a vocabulary."""

import json

import pytest
from conftest import load_script, save_small_llama, save_tiny_policy

from llm_recipes.recipe import RecipeError


@pytest.fixture(scope="module")
def models(tiny_tokenizer, tmp_path_factory):
    """A 2-layer teacher and a smaller 1-layer student, both untrained, on the tiny tokenizer."""
    root = tmp_path_factory.mktemp("distill_models")
    teacher = save_small_llama(tiny_tokenizer, root / "teacher", seed=1)
    return teacher, save_tiny_policy(tiny_tokenizer, root / "student")


def write_recipe(path, world, teacher, student, mode: str, output_dir, *lines: str) -> None:
    path.write_text("\n".join([
        f"output_dir: {output_dir}", f"model_name_or_path: {student}", f"teacher_model_name_or_path: {teacher}",
        f"distill_mode: {mode}", "dataset_mixture:", "  datasets:",
        f"    - {{path: {world}/rl/train.jsonl, columns: [prompt]}}",
        "  eval_datasets:", f"    - {{path: {world}/rl/test.jsonl, columns: [prompt, answer]}}",
        "  max_examples: 64", "pass_at_k: 2", "pass_at_k_prompts: 4",
        "use_cpu: true", "bf16: false", "activation_checkpointing: false", "seed: 0", "max_steps: 12",
        "per_device_train_batch_size: 8", "per_device_eval_batch_size: 8", "learning_rate: 1.0e-2",
        "max_completion_length: 12", "eval_strategy: 'no'", "eval_on_start: true", "logging_steps: 4",
        "save_strategy: 'no'", "report_to: none", *lines]) + "\n")


def distill(tmp_path, tiny_world, models, mode: str, *lines: str) -> dict:
    teacher, student = models
    recipe = tmp_path / f"{mode}.yaml"
    write_recipe(recipe, tiny_world, teacher, student, mode, tmp_path / mode, *lines)
    load_script("distill").main(["--config", str(recipe)])
    return json.loads((tmp_path / mode / "stage_complete.json").read_text())


def test_off_policy_student_learns_the_teachers_answers(tiny_world, models, tmp_path):
    from transformers import AutoModelForCausalLM

    summary = distill(tmp_path, tiny_world, models, "off_policy")
    out = tmp_path / "off_policy"
    answers = [json.loads(line) for line in (out / "teacher_generations.jsonl").read_text().splitlines()]
    assert len(answers) == 64 and all(a["completion"][0]["role"] == "assistant" for a in answers)
    # Held-out loss on the teacher's answers to held-out prompts falls: the student has moved towards the teacher.
    assert summary["eval_loss"] < summary["eval_loss_before"] - 0.5
    assert summary["distill_mode"] == "off_policy" and summary["teacher_parameters"] > summary["parameters"]
    assert "eval_greedy_accuracy" in summary and "eval_greedy_accuracy_before" in summary
    AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)


def test_off_policy_resumed_run_reuses_the_teachers_answers(tiny_world, models, tmp_path):
    """A run cut off after the teacher answered trains on those answers, not on new ones (a sampling teacher
    would answer differently): planted answers for the same prompts are kept as they are."""
    first = tmp_path / "first"
    first.mkdir()
    distill(first, tiny_world, models, "off_policy", "max_steps: 1")
    rows = [json.loads(line) for line in (first / "off_policy/teacher_generations.jsonl").read_text().splitlines()]
    planted = "".join(json.dumps({**row, "completion": [{"role": "assistant", "content": "planted"}]}) + "\n"
                      for row in rows)
    (tmp_path / "off_policy").mkdir()
    (tmp_path / "off_policy/teacher_generations.jsonl").write_text(planted)
    distill(tmp_path, tiny_world, models, "off_policy", "max_steps: 1")
    assert (tmp_path / "off_policy/teacher_generations.jsonl").read_text() == planted


def test_on_policy_student_moves_towards_the_teacher(tiny_world, models, tmp_path):
    summary = distill(tmp_path, tiny_world, models, "on_policy", "beta: 1.0")
    assert summary["distill_mode"] == "on_policy"
    # Reverse KL on the student's own held-out answers falls from where the untrained student started.
    assert summary["eval_loss"] < summary["eval_loss_before"]


def test_a_teacher_of_another_vocabulary_is_refused_before_any_weights_load(tiny_world, models, tmp_path):
    from transformers import AutoConfig

    teacher, student = models
    other = tmp_path / "other_teacher"
    config = AutoConfig.from_pretrained(teacher)
    config.vocab_size += 64
    config.save_pretrained(other)
    with pytest.raises(RecipeError, match="share one vocabulary"):
        distill(tmp_path, tiny_world, (other, student), "on_policy", f"tokenizer_name_or_path: {student}")
    assert not (tmp_path / "on_policy").exists()


def test_unknown_mode_is_refused(tiny_world, models, tmp_path):
    with pytest.raises(RecipeError, match="distill_mode: 'offpolicy'"):
        distill(tmp_path, tiny_world, models, "offpolicy")
