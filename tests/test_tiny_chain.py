"""The README's main command: the tiny chain end to end, killed in the middle of pretraining and run again."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT
from transformers import AutoModelForCausalLM, AutoTokenizer

PIPELINE = [sys.executable, str(REPO_ROOT / "scripts/run_pipeline.py"), "--config",
            str(REPO_ROOT / "recipes/tiny/pipeline.yaml")]


@pytest.mark.slow
def test_tiny_chain_survives_a_kill_and_finishes_with_a_trained_model(tmp_path):
    # Outputs land under the working directory, so the chain runs here as on a fresh clone.
    first = subprocess.Popen(PIPELINE, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    checkpoint = tmp_path / "runs/tiny/pretrain/checkpoint-400/trainer_state.json"
    deadline = time.time() + 900
    while not checkpoint.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(2)
    assert checkpoint.exists(), "pretraining never wrote its first checkpoint"
    os.killpg(first.pid, signal.SIGKILL)  # the whole tree: runner, accelerate, trainer
    first.wait()
    assert not (tmp_path / "runs/tiny/pretrain/stage_complete.json").exists()

    second = subprocess.run(PIPELINE, cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "[data] complete" in second.stdout and "[tokenizer] complete" in second.stdout
    assert "(resuming)" in second.stdout and "Resuming from" in second.stdout

    pretrain = tmp_path / "runs/tiny/pretrain"
    summary = json.loads((pretrain / "stage_complete.json").read_text())
    assert summary["eval_loss"] < 0.3 * summary["eval_loss_before"]
    model = AutoModelForCausalLM.from_pretrained(pretrain)
    tokenizer = AutoTokenizer.from_pretrained(pretrain)
    assert model.config.vocab_size == len(tokenizer)

    # Continued pretraining: the domain becomes far more predictable, the general corpus stays within 5%.
    cpt = json.loads((tmp_path / "runs/tiny/cpt/stage_complete.json").read_text())
    assert cpt["eval_domain_perplexity"] < 0.1 * cpt["eval_domain_perplexity_before"]
    assert cpt["eval_general_perplexity"] < 1.05 * cpt["eval_general_perplexity_before"]
