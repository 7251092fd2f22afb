"""The accelerate configs load, and the multi-process CPU one really runs several processes."""

import os
import re
import subprocess
import sys
import textwrap

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from conftest import REPO_ROOT, free_port

CONFIGS = sorted((REPO_ROOT / "accelerate_configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path):
    config = load_config_from_file(str(path))
    assert config.num_processes >= 1


def test_every_config_is_named_in_the_readme():
    readme = (REPO_ROOT / "README.md").read_text()
    for path in CONFIGS:
        assert f"accelerate_configs/{path.name}" in readme, path.name


def test_cpu_multi_process_config_gives_world_size_two(tmp_path):
    # `accelerate launch --cpu --num_processes 2` silently runs one process; this config must not.
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent("""
        from transformers import TrainingArguments
        args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
        print(f"rank={args.process_index} world={args.world_size}", flush=True)
    """))
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port()),
         "--config_file", str(REPO_ROOT / "accelerate_configs/cpu_multi_process.yaml"), str(probe)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # Two processes print at once, so their lines may interleave on the shared pipe.
    assert sorted(re.findall(r"rank=\d world=\d", result.stdout)) == ["rank=0 world=2", "rank=1 world=2"]
