"""The README's main command, the tiny chain, end to end: killed in the middle of pretraining and run again.

The full chain takes longer than CI allows, so CI runs the same pipeline file through the same runner, scripts
and recipes with fewer steps per training stage and fewer documents per eval task: recipes/tiny/ci_short.yaml,
merged in with `--overrides` as a user would. Every stage must still move its own measure in its direction, on
held-out data, by a margin that held over seeds (`python bench/seeds.py --seeds 1 2 3 --from data --overrides
recipes/tiny/ci_short.yaml`; the values per seed are quoted next to each assertion). A seed perturbs training as
another CPU's rounding does, so a margin that holds across seeds holds on another machine of this kind.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO_ROOT
from transformers import AutoModelForCausalLM, AutoTokenizer

SHORT = REPO_ROOT / "recipes/tiny/ci_short.yaml"
COMMAND = [sys.executable, str(REPO_ROOT / "scripts/run_pipeline.py"), "--config",
           str(REPO_ROOT / "recipes/tiny/pipeline.yaml"), "--overrides", str(SHORT)]


def rollout_trend(state: dict, key: str, steps: int = 2) -> tuple[float, float]:
    """Mean of a logged rollout metric over the first and the last `steps` training steps. Each prompt is sampled
    once, before the policy has trained on it, so a rise is a rise on prompts it had not seen."""
    values = [entry[key] for entry in state["log_history"] if key in entry]
    assert len(values) >= 2 * steps, (key, values)
    return sum(values[:steps]) / steps, sum(values[-steps:]) / steps


@pytest.mark.slow
def test_tiny_chain_survives_a_kill_and_finishes_with_a_report_card(tmp_path):
    # Outputs land under the working directory, so the chain runs here as on a fresh clone.
    first = subprocess.Popen(COMMAND, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    save_steps = yaml.safe_load(SHORT.read_text())["stages"]["pretrain"]["save_steps"]
    checkpoint = tmp_path / f"runs/tiny/pretrain/checkpoint-{save_steps}/trainer_state.json"
    deadline = time.time() + 600
    while not checkpoint.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert checkpoint.exists(), "pretraining never wrote its first checkpoint"
    os.killpg(first.pid, signal.SIGKILL)  # the whole tree: runner, accelerate, trainer
    first.wait()
    assert not (tmp_path / "runs/tiny/pretrain/stage_complete.json").exists()

    second = subprocess.run(COMMAND, cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "[data] complete" in second.stdout and "[tokenizer] complete" in second.stdout
    assert "(resuming)" in second.stdout and "Resuming from" in second.stdout
    # No library start-up noise in any stage's log: torchao's kernels built for another Python, pytree deprecations.
    for log in (tmp_path / "runs/tiny/logs").glob("*.log"):
        text = log.read_text()
        assert "Failed to load" not in text and "is an Enum subclass" not in text, log.name

    def summary_of(stage: str) -> dict:
        return json.loads((tmp_path / f"runs/tiny/{stage}/stage_complete.json").read_text())

    def state_of(stage: str) -> dict:
        return json.loads((tmp_path / f"runs/tiny/{stage}/trainer_state.json").read_text())

    # Pretraining, resumed after the kill, lowers held-out loss and reloads with from_pretrained.
    # Over 3 seeds the loss fell to 0.224-0.226 of its start (7.15 -> 1.6).
    pretrain = summary_of("pretrain")
    assert pretrain["eval_loss"] < 0.4 * pretrain["eval_loss_before"], pretrain
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "runs/tiny/pretrain")
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(tmp_path / "runs/tiny/pretrain"))
    # Continued pretraining lowers the domain's loss (ratio 0.42-0.46 over seeds) without raising the general one
    # (0.84: the worked solutions are also in the general crawl).
    cpt = summary_of("cpt")
    assert cpt["eval_domain_loss"] < 0.65 * cpt["eval_domain_loss_before"], cpt
    assert cpt["eval_general_loss"] < 1.1 * cpt["eval_general_loss_before"], cpt

    # The mixture of experts, pretrained by the same script: its held-out loss falls, its router's balancing loss is
    # logged, and each of its 4 layers reports 8 experts' shares of the routed tokens.
    moe = summary_of("pretrain_moe")
    assert moe["eval_loss"] < 0.6 * moe["eval_loss_before"], moe
    assert moe["final_moe_aux_loss"] > 0 and len(moe["expert_shares"]) == 4
    assert all(len(layer) == 8 and abs(sum(layer) - 1) < 1e-3 for layer in moe["expert_shares"])

    # Every checkpoint was evaluated by lm-eval.
    pipeline = yaml.safe_load((REPO_ROOT / "recipes/tiny/pipeline.yaml").read_text())
    evals = [s for s in pipeline["stages"] if s["script"].endswith("evaluate.py")]
    for stage in evals:
        results = json.loads((tmp_path / stage["output_dir"] / "results.json").read_text())
        assert results["results"], stage["name"]
    # Context extension: at 4x the pretraining length, the extended model reads held-out ~490-token documents
    # better than its unextended parent (word perplexity at 512 tokens, ratio 0.47-0.54 over seeds).
    long_ppl = {name: json.loads((tmp_path / f"runs/tiny/eval/{name}/results.json").read_text())["results"][
        "tiny_long_perplexity"]["word_perplexity,none"] for name in ("cpt_at_512", "long_context_at_512")}
    assert long_ppl["long_context_at_512"] < 0.75 * long_ppl["cpt_at_512"], long_ppl

    # SFT lowers the loss of held-out conversations' assistant tokens (ratio 0.51 over seeds).
    sft = summary_of("sft")
    assert sft["eval_loss"] < 0.7 * sft["eval_loss_before"], sft
    # The reward model ranks held-out pairs: its Bradley-Terry loss falls from chance (log 2; ratio 0.60-0.63 over
    # seeds), and it ranks the checkable pairs (a wrong carry, a broken think block) above chance (72-74%; ~76
    # pairs, standard error 5 points). The fresh head's accuracy before training is a coin (45-69%), not a parent.
    reward = summary_of("reward")
    assert reward["eval_loss"] < 0.8 * reward["eval_loss_before"], reward
    assert reward["eval_verifiable_pair_accuracy"] > 0.62, reward
    # DPO moves the policy towards the chosen reply of held-out pairs, relative to its parent: the mean implicit
    # reward margin (0 before; 0.87-1.24 over seeds) and the policy's own log-prob margin (+8.7 to +13.0 nats).
    # Whether the policy then prefers more pairs outright moved by -1.7 to +3.6 points here: not asserted.
    dpo = summary_of("dpo")
    assert dpo["eval_rewards/margins"] > 0.4, dpo
    assert dpo["eval_logp_margin"] > dpo["eval_logp_margin_before"] + 3, dpo
    # RL: the short chain's SFT model rarely answers right (pass@1 ~1%), so what its rewards can move in six steps
    # is the form of the reply ("<think>...</think>", "The answer is N."). GRPO raises its held-out reward (+0.17 to
    # +0.18 over seeds) and the answer line of its fresh rollouts (+0.10 to +0.14).
    grpo = summary_of("grpo")
    assert grpo["eval_reward"] > grpo["eval_reward_before"] + 0.05, grpo
    before, after = rollout_trend(state_of("grpo"), "rewards/answer_format/mean")
    assert after > before + 0.03, (before, after)
    # PPO's six steps do not move its reward reliably: its value head starts at zero and explains none of the
    # returns yet (explained variance ~0.00), and its rollout score rose in one seed (0.58 -> 0.84) and fell or
    # stayed in two (0.58 -> 0.45, 0.66 -> 0.73 -> 0.63). Its direction is asserted where it has the steps:
    # tests/test_ppo.py, test_ppo_math.py and test_multi_process.py. Here, that it ran and measured the RL tier.
    for stage in ("ppo", "grpo"):  # the RL tier measured before and after, with the KL to the parent
        summary = summary_of(stage)
        assert {"eval_pass@1_before", "eval_pass@8_before", "eval_pass@1", "eval_kl"} <= set(summary), summary

    # Distillation: the off-policy student learns the teacher's answers to held-out prompts (its loss on them falls),
    # and both students and their baseline were scored on the math tiers (the effect needs the full chain's steps).
    off_policy = summary_of("distill_off_policy")
    assert off_policy["eval_loss"] < off_policy["eval_loss_before"], off_policy
    assert (tmp_path / "runs/tiny/distill_off_policy/teacher_generations.jsonl").is_file()
    assert {"eval_greedy_accuracy", "eval_greedy_accuracy_before"} <= set(summary_of("distill_on_policy"))
    # Constitutional SFT: the SFT model's replies that broke a principle were revised, and fine-tuned on.
    assert summary_of("constitutional_revisions")["revised"] > 0
    assert summary_of("sft_constitutional")["stage"] == "sft"

    # The report card: the lab table, every checkpoint side by side, the curves.
    report = (tmp_path / "runs/tiny/report/report.md").read_text()
    assert "| | base | sft | dpo | ppo | grpo |" in report
    assert "| | sft | student_sft | distill_off_policy | distill_on_policy |" in report
    assert "| | sft | sft_constitutional |" in report
    assert "| pretrain_moe | expert shares, layer 3 |" in report
    header = "| task | metric | " + " | ".join(s["name"].removeprefix("eval_") for s in evals) + " |"
    assert header in report
    assert (tmp_path / "runs/tiny/report/loss_curves.png").is_file()

    # The export passed the regression gate against the release before it (the same model, exported again).
    assert summary_of("release_check")["baseline_results"] == "runs/tiny/export"
    # The final model was exported (quantized, carded) and dry-run pushed.
    export = tmp_path / "runs/tiny/export"
    assert json.loads((export / "stage_complete.json").read_text())["quantization"] == "int8_weight_only"
    assert (tmp_path / "runs/tiny/export-hub-dry-run/README.md").is_file()
    assert [e["stage"] for e in json.loads((export / "lineage.json").read_text())] == [
        "pretrain", "cpt", "long_context", "sft", "grpo", "export"]

    # A third run finds everything done: evaluations are not repeated, the report card is rewritten.
    third = subprocess.run(COMMAND, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0
    assert all(f"[{s['name']}] complete" in third.stdout for s in evals)
    assert "[report] done" in third.stdout
