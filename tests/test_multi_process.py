"""Several processes on the CPU (DDP over gloo, DeepSpeed ZeRO-2 and ZeRO-3): a recipe that states its global batch
size trains the same on two processes as on one, and what two processes save reloads in one.

Every run is a real `accelerate launch` of a stage script, and every summary must say it ran on the number of
processes asked for (`accelerate launch --cpu --num_processes 2` would silently run one).

Tolerance. With the same global batch, the same seed and the same data order, one process accumulating two
micro-batches and two processes averaging their gradients compute the same sums in another order: measured here the
loss curves agree to ~1e-7 relative (float32 rounding). We allow 1e-4, well below what a real mistake does: a
run whose global batch was doubled is off by ~8e-3 within six steps (`test_a_different_global_batch_is_told_apart`
measures that mistake with the same check and asks for at least 10 times the tolerance).
RL stages sample their replies, and each process samples its own, so their curves cannot match a one-process run
step by step; there the two-process run must reach what the one-process tests ask of it.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, free_port, save_small_llama, save_tiny_policy
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.slow

TOLERANCE = 1e-4
CHATML = REPO_ROOT / "recipes" / "templates" / "chatml.jinja"


def extension_env() -> dict:
    # DeepSpeed compiles its CPU communication op on first use; keep it between runs of the suite.
    return {"TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".cache/torch_extensions"))}


def build_deepspeed_op() -> None:
    """Compile DeepSpeed's op in one process, before two processes of a run would both try."""
    code = ("from deepspeed.accelerator import get_accelerator; "
            "get_accelerator().create_op_builder('ShareMemCommBuilder').load()")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env={**os.environ, **extension_env()})


def launch(script: str, recipe, output_dir, processes: int = 2, accelerate_config: str = "cpu_multi_process.yaml",
           overrides: tuple = ()) -> dict:
    """Run `accelerate launch scripts/<script>.py --config recipe` on `processes` CPU processes; return the stage
    summary, after checking that the run had that many processes."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port()),
               "--config_file", str(REPO_ROOT / "accelerate_configs" / accelerate_config),
               "--num_processes", str(processes)]
    if accelerate_config.startswith("zero"):  # the GPU configs ask for bf16; the CPU runs in float32
        command += ["--mixed_precision", "no"]
    command += [str(REPO_ROOT / "scripts" / f"{script}.py"), "--config", str(recipe), "--output_dir", str(output_dir),
                *overrides]
    env = {**os.environ, **extension_env(), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "tests")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    summary = json.loads((output_dir / "stage_complete.json").read_text())
    assert summary["processes"] == processes, summary
    return summary


def logged(folder, key="loss") -> list[float]:
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    return [h[key] for h in history if key in h and "train_runtime" not in h]


def relative_gap(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b) and a, (a, b)
    return max(abs(x - y) / abs(x) for x, y in zip(a, b))


def weight_gap(folder_a, folder_b) -> float:
    a, b = load_file(folder_a / "model.safetensors"), load_file(folder_b / "model.safetensors")
    assert sorted(a) == sorted(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def base(tiny_tokenizer, tmp_path_factory):
    return save_small_llama(tiny_tokenizer, tmp_path_factory.mktemp("base"), max_position_embeddings=512)


# --- pretraining: DDP, ZeRO-2, ZeRO-3 -----------------------------------------------------------------------------

def pretrain_recipe(path, tiny_world, tiny_tokenizer, start_from=None):
    model = (f"model_name_or_path: {start_from}\n" if start_from else
             f"tokenizer_name_or_path: {tiny_tokenizer}\nmodel_config: {{model_type: llama, hidden_size: 64, "
             "intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, "
             "max_position_embeddings: 256, tie_word_embeddings: true}\n")
    path.write_text(
        model + f"max_seq_length: 64\ndataset_mixture:\n  datasets: [{tiny_world}/raw/web.jsonl]\n"
        f"  eval_datasets: [{tiny_world}/raw/web_heldout.jsonl]\n  seed: 0\n"
        "use_cpu: true\nseed: 42\nmax_steps: 20\nglobal_batch_size: 16\nper_device_train_batch_size: 8\n"
        "learning_rate: 3.0e-3\nlr_scheduler_type: constant\nmax_grad_norm: 1.0\neval_strategy: 'no'\n"
        "logging_steps: 1\nsave_strategy: steps\nsave_steps: 10\nreport_to: none\ndisable_tqdm: true\n"
    )
    return path


@pytest.fixture(scope="module")
def pretrained(tiny_world, tiny_tokenizer, base, tmp_path_factory):
    """The same recipe (global batch 16) from scratch on one process (accumulating 2 micro-batches of 8), on two
    (DDP) and on two under ZeRO-2; and from a checkpoint on one process and on two under ZeRO-3."""
    out = tmp_path_factory.mktemp("pretrain")
    scratch = pretrain_recipe(out / "scratch.yaml", tiny_world, tiny_tokenizer)
    # ZeRO-3 initialises a new model's weights module by module (zero.Init), a valid but different random start;
    # it is compared from a checkpoint, which is how ZeRO-3 is used (models too large for one device).
    continued = pretrain_recipe(out / "continued.yaml", tiny_world, tiny_tokenizer, start_from=base)
    runs = {
        "one": (scratch, 1, "cpu.yaml"), "ddp": (scratch, 2, "cpu_multi_process.yaml"),
        "zero2": (scratch, 2, "zero2.yaml"), "one_continued": (continued, 1, "cpu.yaml"),
        "zero3": (continued, 2, "zero3.yaml"),
    }
    build_deepspeed_op()
    summaries = {name: launch("pretrain", recipe, out / name, n, config) for name, (recipe, n, config) in runs.items()}
    return out, summaries


def test_pretrain_loss_curve_on_two_processes_matches_one(pretrained):
    out, summaries = pretrained
    assert summaries["one"]["global_batch_size"] == summaries["ddp"]["global_batch_size"] == 16
    one, ddp = logged(out / "one"), logged(out / "ddp")
    assert len(one) == 20 and one[-1] < one[0] - 1.0  # it trains
    assert relative_gap(one, ddp) < TOLERANCE
    # From a config, both started from the same seeded weights, so the saved models agree too.
    assert weight_gap(out / "one", out / "ddp") < 1e-4


def test_deepspeed_zero2_and_zero3_match_one_process(pretrained):
    out, _ = pretrained
    assert relative_gap(logged(out / "one"), logged(out / "zero2")) < TOLERANCE
    assert relative_gap(logged(out / "one_continued"), logged(out / "zero3")) < TOLERANCE
    # ZeRO-3 shards the weights; the saved model is gathered whole (zero3_save_16bit_model) and loads in one.
    reloaded = AutoModelForCausalLM.from_pretrained(out / "zero3")
    assert reloaded.num_parameters() == AutoModelForCausalLM.from_pretrained(out / "one_continued").num_parameters()
    assert weight_gap(out / "one_continued", out / "zero3") < 1e-4


def test_a_checkpoint_of_two_processes_resumes_on_one_to_the_same_end(pretrained, tiny_world, tiny_tokenizer):
    out, _ = pretrained
    recipe = pretrain_recipe(out / "resume.yaml", tiny_world, tiny_tokenizer)
    launch("pretrain", recipe, out / "resumed", 1, "cpu.yaml",
           overrides=("--resume_from_checkpoint", str(out / "ddp" / "checkpoint-10")))
    assert relative_gap(logged(out / "one")[10:], logged(out / "resumed")[10:]) < TOLERANCE
    assert weight_gap(out / "one", out / "resumed") < 1e-4


def test_a_different_global_batch_is_told_apart(pretrained, tiny_world, tiny_tokenizer):
    out, _ = pretrained
    recipe = pretrain_recipe(out / "doubled.yaml", tiny_world, tiny_tokenizer)
    summary = launch("pretrain", recipe, out / "doubled", 2,
                     overrides=("--global_batch_size", "32", "--max_steps", "6"))
    assert summary["global_batch_size"] == 32
    assert relative_gap(logged(out / "one")[:6], logged(out / "doubled")) > 10 * TOLERANCE


# --- SFT and DPO: DDP against one process --------------------------------------------------------------------------

def one_and_two_processes(script: str, recipe, tmp_path) -> tuple[list[float], list[float]]:
    """The stage run on one process and on two (DDP) with the same recipe; their loss curves, after checking that
    both saved the same weights."""
    launch(script, recipe, tmp_path / "one", 1, "cpu.yaml")
    launch(script, recipe, tmp_path / "ddp", 2)
    assert weight_gap(tmp_path / "one", tmp_path / "ddp") < 1e-4
    return logged(tmp_path / "one"), logged(tmp_path / "ddp")


def test_sft_on_two_processes_matches_one(tiny_world, base, tmp_path):
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(
        f"model_name_or_path: {base}\nchat_template_path: {CHATML}\neos_token: <|im_end|>\nassistant_only_loss: true\n"
        f"max_length: 512\ndataset_mixture:\n  datasets:\n    - {{path: {tiny_world}/sft/train.jsonl, weight: 0.8}}\n"
        f"    - {{path: {tiny_world}/sft/tools_train.jsonl, weight: 0.2}}\n  max_examples: 400\n"
        "use_cpu: true\nbf16: false\nactivation_checkpointing: false\nseed: 5\nmax_steps: 12\n"
        "global_batch_size: 16\nper_device_train_batch_size: 8\nlearning_rate: 3.0e-3\nwarmup_steps: 2\n"
        "eval_strategy: 'no'\nlogging_steps: 1\nsave_strategy: 'no'\nreport_to: none\ndisable_tqdm: true\n"
    )
    one, ddp = one_and_two_processes("sft", recipe, tmp_path)
    assert len(one) == 12 and one[-1] < one[0]
    assert relative_gap(one, ddp) < TOLERANCE


def test_dpo_on_two_processes_matches_one(tiny_world, base, tmp_path):
    pairs = f"{{path: {tiny_world}/preferences/train.jsonl, columns: [prompt, chosen, rejected]}}"
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(
        f"model_name_or_path: {base}\nmax_length: 256\nbeta: 0.1\ndataset_mixture:\n  datasets: [{pairs}]\n"
        "  max_examples: 200\nuse_cpu: true\nbf16: false\ngradient_checkpointing: false\nseed: 0\nmax_steps: 8\n"
        "global_batch_size: 16\nper_device_train_batch_size: 8\nlearning_rate: 2.0e-3\neval_strategy: 'no'\n"
        "logging_steps: 1\nsave_strategy: 'no'\nreport_to: none\ndisable_tqdm: true\n"
    )
    one, ddp = one_and_two_processes("dpo", recipe, tmp_path)
    assert len(one) == 8 and one[-1] < one[0]
    assert relative_gap(one, ddp) < TOLERANCE
    assert relative_gap(logged(tmp_path / "one", "rewards/margins")[1:],
                        logged(tmp_path / "ddp", "rewards/margins")[1:]) < 1e-2  # margins start at 0: relative to small


# --- GRPO and PPO: two processes reach what one does ---------------------------------------------------------------

@pytest.fixture(scope="module")
def random_policy(tiny_tokenizer, tmp_path_factory):
    return save_tiny_policy(tiny_tokenizer, tmp_path_factory.mktemp("policy"))


def rl_data(tiny_world) -> str:
    rl = tiny_world / "rl"
    return (f"dataset_mixture:\n  datasets: [{{path: {rl}/train.jsonl, columns: [prompt]}}]\n"
            f"  eval_datasets: [{{path: {rl}/test.jsonl, columns: [prompt]}}]\n  max_examples: 400\n")


def test_grpo_on_two_processes_raises_the_reward(tiny_world, random_policy, tmp_path):
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text(
        f"model_name_or_path: {random_policy}\nreward_funcs: ['toy_rewards:digit_share']\n{rl_data(tiny_world)}"
        "num_generations: 8\nmax_completion_length: 8\nglobal_batch_size: 32\nper_device_train_batch_size: 16\n"
        "temperature: 1.0\nlearning_rate: 3.0e-2\nlr_scheduler_type: constant\nmax_steps: 16\nbeta: 0.0\n"
        "use_cpu: true\nbf16: false\ngradient_checkpointing: false\nlogging_steps: 1\nsave_strategy: 'no'\n"
        "report_to: none\nseed: 0\ndisable_tqdm: true\neval_on_start: true\neval_strategy: 'no'\n"
        "per_device_eval_batch_size: 64\nnum_generations_eval: 1\n"
    )
    summary = launch("grpo", recipe, tmp_path / "ddp", 2)
    reward = logged(tmp_path / "ddp", "reward")
    assert len(reward) == 16 and sum(reward[-4:]) / 4 > sum(reward[:4]) / 4 + 0.1, reward
    assert summary["eval_reward"] > summary["eval_reward_before"] + 0.1, summary


def test_ppo_on_two_processes_raises_the_reward(tiny_world, random_policy, tmp_path):
    recipe = tmp_path / "ppo.yaml"
    recipe.write_text(
        f"model_name_or_path: {random_policy}\nreward_funcs: ['toy_rewards:digit_share']\n{rl_data(tiny_world)}"
        "max_completion_length: 8\nmissing_eos_penalty: null\ntemperature: 1.0\nglobal_batch_size: 16\n"
        "per_device_train_batch_size: 8\nnum_mini_batches: 2\nnum_ppo_epochs: 2\nlearning_rate: 1.0e-2\n"
        "kl_coef: 0.0\nuse_cpu: true\nseed: 5\n"
        "max_steps: 16\neval_on_start: true\nlogging_steps: 1\nsave_strategy: 'no'\nreport_to: none\n"
        "disable_tqdm: true\n"
    )
    summary = launch("ppo", recipe, tmp_path / "ddp", 2)
    # Each process samples 8 x 2 replies a step (2 minibatches of the global batch of 16): 32 a step in all.
    assert logged(tmp_path / "ddp", "episode")[:2] == [32, 64]
    scores = logged(tmp_path / "ddp", "objective/scores")
    assert sum(scores[-4:]) / 4 > sum(scores[:4]) / 4 + 0.1, scores
    assert summary["eval_reward"] > summary["eval_reward_before"] + 0.1, summary
