"""bench/gpu_check.sh, the script a GPU machine runs: every check that needs no CUDA runs here on the CPU (tiny
shapes, 2 steps), through the same recipes, launchers and summaries as on the GPU; a machine without CUDA or a
missing package is refused before anything runs."""

import importlib.util
import json
import subprocess

import pytest
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_check_a_cpu_can_run_passes_and_prints_one_table(tiny_world, tiny_tokenizer, tmp_path):
    rows_file = tmp_path / "rows.json"
    result = subprocess.run(["bash", str(REPO_ROOT / "bench/gpu_check.sh"), "--cpu", "--world", str(tiny_world),
                             "--tokenizer", str(tiny_tokenizer), "--work_dir", str(tmp_path / "work"),
                             "--out", str(rows_file)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {row["name"]: row for row in json.loads(rows_file.read_text())}
    for name in ("pretrain", "sft", "export_nf4"):
        assert rows[name]["status"] == "ok", rows[name]
    assert rows["pretrain"]["values"]["tokens/s"] > 0 and rows["sft"]["values"]["peak RSS GiB"] > 0
    assert rows["export_nf4"]["values"]["greedy tokens/s"] > 0
    # What needs CUDA says so instead of running a CPU stand-in.
    for name in ("fsdp2", "grpo_vllm", "sft_qlora"):
        assert rows[name]["status"].startswith("skipped on CPU"), rows[name]
    assert "| check | status | seconds | measured |" in result.stdout


def test_a_missing_package_stops_every_check_before_any_runs(tmp_path, monkeypatch, capsys):
    gpu_check = gpu_check_module()
    monkeypatch.setattr(gpu_check, "missing_packages", lambda names: [n for n in names if n == "torchao"])
    code = gpu_check.main(["--cpu", "--work_dir", str(tmp_path / "work")])
    assert code == 2
    assert "export_nf4 needs torchao: pip install torchao" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()  # nothing was made


def test_without_cuda_the_gpu_run_is_refused_with_the_way_out(tmp_path, capsys):
    gpu_check = gpu_check_module()
    assert gpu_check.main(["--work_dir", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device is visible" in err and "--cpu" in err
