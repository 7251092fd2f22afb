"""Every training stage survives SIGKILL: killed at some step after its first complete checkpoint, the same command
run again resumes and ends with weights identical to an uninterrupted run (seeded, CPU)."""

import signal
import subprocess
import sys
import time

import pytest
import test_distill
import test_dpo
import test_grpo
import test_ppo
import test_pretrain
import test_reward
import test_sft
import torch
from conftest import REPO_ROOT, load_script, save_small_llama, save_tiny_policy
from safetensors.torch import load_file

# Each stage's own test recipe, made to save early and run on past its first checkpoint; the held-out sets are left
# out, since weights are what is compared.
NO_EVAL = ["--eval_on_start", "false", "--dataset_mixture.eval_datasets", "[]"]
SAVE_EARLY = ["--save_strategy", "steps", "--save_steps", "4", "--max_steps", "10", *NO_EVAL]


def recipe_of(stage: str, root, world, tokenizer) -> list[str]:
    path = root / "recipe.yaml"
    if stage == "pretrain":
        test_pretrain.write_recipe(path, world, tokenizer, root / "unused")
    elif stage == "sft":
        model = save_small_llama(tokenizer, root / "base", max_position_embeddings=512)
        test_sft.write_recipe(path, world, model, root / "unused")
    elif stage in ("reward", "dpo"):
        module = test_reward if stage == "reward" else test_dpo
        module.write_recipe(path, save_small_llama(tokenizer, root / "base"), world / "preferences/train.jsonl",
                            root / "unused")
    elif stage.startswith("distill"):
        teacher = save_small_llama(tokenizer, root / "teacher", seed=1)
        test_distill.write_recipe(path, world, teacher, save_tiny_policy(tokenizer, root / "student"),
                                  stage.removeprefix("distill_"), root / "unused")
    elif stage == "ppo":
        test_ppo.write_recipe(path, world, save_tiny_policy(tokenizer, root / "policy"), root / "unused")
        return ["--config", str(path), "--save_steps", "2", "--max_steps", "6", *NO_EVAL]
    else:
        policy = save_tiny_policy(tokenizer, root / "policy")
        return test_grpo.recipe(root, world, policy, reward_funcs="[answer_format]") + SAVE_EARLY
    return ["--config", str(path), *SAVE_EARLY]


def script_of(stage: str) -> str:
    return "distill" if stage.startswith("distill") else stage


def kill_after_first_checkpoint(stage: str, argv: list[str], output_dir, timeout: float = 600) -> None:
    """Run the stage as a process and SIGKILL it as soon as a checkpoint is complete (its trainer state written)."""
    process = subprocess.Popen([sys.executable, str(REPO_ROOT / "scripts" / f"{script_of(stage)}.py"), *argv],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO_ROOT)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and process.poll() is None:
            if any((c / "trainer_state.json").is_file() for c in output_dir.glob("checkpoint-*")):
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        process.kill()
        process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["pretrain", "sft", "reward", "dpo", "ppo", "grpo", "distill_off_policy",
                                   "distill_on_policy"])
def test_a_killed_stage_resumes_to_the_weights_of_an_uninterrupted_run(stage, tiny_world, tiny_tokenizer, tmp_path,
                                                                         capsys):
    argv = recipe_of(stage, tmp_path, tiny_world, tiny_tokenizer)
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    load_script(script_of(stage)).main([*argv, "--output_dir", str(uninterrupted)])
    kill_after_first_checkpoint(stage, [*argv, "--output_dir", str(killed)], killed)
    assert not (killed / "stage_complete.json").exists(), "the run finished before it could be killed"
    capsys.readouterr()
    load_script(script_of(stage)).main([*argv, "--output_dir", str(killed)])  # the same command, run again
    assert f"Resuming from {killed}/checkpoint-" in capsys.readouterr().out  # not a fresh start that ends the same
    expected, resumed = load_file(uninterrupted / "model.safetensors"), load_file(killed / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name, weight in expected.items():
        assert torch.equal(weight, resumed[name]), name
