"""The Slurm launcher starts one `accelerate launch` per node that join one job: run here as two "nodes" on this
machine, with stand-ins for `srun` and `scontrol` that do what Slurm does (one task per node, SLURM_PROCID set)."""

import json
import os
import subprocess

import pytest
from conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.slow

LAUNCHER = REPO_ROOT / "scripts" / "slurm" / "train.sbatch"
FAKE_SRUN = """#!/bin/bash
# srun's options are left out; the command runs once per node, as Slurm task $SLURM_PROCID.
while [[ "$1" == --* ]]; do shift; done
pids=()
for rank in $(seq 0 $(( SLURM_NNODES - 1 ))); do
  SLURM_PROCID=$rank "$@" & pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
"""
FAKE_SCONTROL = """#!/bin/bash
# `scontrol show hostnames NODELIST`: every node is this machine.
for i in $(seq 1 "$SLURM_NNODES"); do echo 127.0.0.1; done
"""


def fake_slurm(tmp_path, nodes: int) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NNODES": str(nodes),
            "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_ID": "1234", "PROCESSES_PER_NODE": "1",
            "MAIN_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}


def test_two_nodes_train_as_one_job(tiny_world, tiny_tokenizer, tmp_path):
    recipe = tmp_path / "pretrain.yaml"
    recipe.write_text(
        f"tokenizer_name_or_path: {tiny_tokenizer}\nmodel_config: {{model_type: llama, hidden_size: 64, "
        "intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, "
        "max_position_embeddings: 256}\n"
        f"max_seq_length: 64\ndataset_mixture:\n  datasets: [{tiny_world}/raw/web.jsonl]\n"
        "use_cpu: true\nmax_steps: 6\nglobal_batch_size: 16\nper_device_train_batch_size: 8\nlogging_steps: 1\n"
        "save_strategy: 'no'\nreport_to: none\ndisable_tqdm: true\n"
    )
    result = subprocess.run(
        ["bash", str(LAUNCHER), "pretrain", str(recipe), "accelerate_configs/cpu_multi_process.yaml",
         "--output_dir", str(tmp_path / "out")],
        cwd=REPO_ROOT, env=fake_slurm(tmp_path, nodes=2), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "pretrain on 2 node(s) x 1 processes" in result.stdout
    summary = json.loads((tmp_path / "out" / "stage_complete.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch_size"] == 16
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 6 and losses[-1] < losses[0]


def test_a_missing_recipe_is_named_before_anything_is_launched(tmp_path):
    result = subprocess.run(["bash", str(LAUNCHER), "sft", "recipes/nowhere/sft.yaml"], cwd=REPO_ROOT,
                            env=fake_slurm(tmp_path, nodes=2), capture_output=True, text=True)
    assert result.returncode == 2 and "recipes/nowhere/sft.yaml not found" in result.stderr
