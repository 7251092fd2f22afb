"""bench/seeds.py: each seed runs the chosen stages in its own folder, after the finished ones of the base chain."""

import importlib.util
import json
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A stage script: records its call in the run folder and writes a summary with one number.
STAGE_SCRIPT = textwrap.dedent("""
    import argparse, json, os
    p = argparse.ArgumentParser()
    p.add_argument("--output_dir"); p.add_argument("--upstream", default="")
    a = p.parse_args()
    os.makedirs(a.output_dir, exist_ok=True)
    with open("calls.log", "a") as f:
        f.write(json.dumps({"output_dir": a.output_dir, "upstream": a.upstream}) + "\\n")
    json.dump({"score": len(a.output_dir)}, open(os.path.join(a.output_dir, "stage_complete.json"), "w"))
""")


def load_seeds():
    spec = importlib.util.spec_from_file_location("bench_seeds", REPO / "bench/seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def base(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(STAGE_SCRIPT)
    stages = "\n".join(f"  - {{name: {name}, script: {script}, output_dir: out/{name}, launcher: python"
                       + (", args: {upstream: '{first}'}}" if name != "first" else "}")
                       for name in ("first", "aside", "second", "third", "fourth"))
    (tmp_path / "pipeline.yaml").write_text(f"log_dir: logs\nstages:\n{stages}\n")
    # "aside" (before --from, never run) is what pretrain_moe is to post-training: no chosen stage reads it.
    (tmp_path / "out/first").mkdir(parents=True)
    (tmp_path / "out/first/stage_complete.json").write_text(json.dumps({"score": 1}))
    return tmp_path


def test_only_the_chosen_stages_run_in_each_seed_folder(base, capsys):
    seeds = load_seeds()
    assert seeds.main(["--config", str(base / "pipeline.yaml"), "--base", str(base), "--seeds", "1", "2",
                       "--from", "second", "--stages", "fourth", "second", "--name", "sweep"]) == 0
    root = base / "runs/seeds/sweep"
    for seed in (1, 2):
        made = [json.loads(line) for line in (root / f"seed-{seed}/calls.log").read_text().splitlines()]
        # In the pipeline's order, whatever the order given; the stage before --from is the base's, linked.
        assert [call["output_dir"] for call in made] == ["out/second", "out/fourth"]
        assert made[0]["upstream"] == "out/first"
        assert (root / f"seed-{seed}/out/first").resolve() == (base / "out/first").resolve()
        assert not (root / f"seed-{seed}/out/third").exists()
        assert not (root / f"seed-{seed}/out/aside").exists()
    summary = json.loads((root / "summary.json").read_text())
    assert summary["1"]["second/score"] == len("out/second")


def test_an_unknown_stage_is_refused_before_anything_runs(base, capsys):
    seeds = load_seeds()
    with pytest.raises(SystemExit):
        seeds.main(["--config", str(base / "pipeline.yaml"), "--base", str(base), "--seeds", "1",
                    "--from", "second", "--stages", "thrid"])
    assert "thrid not among the stages from 'second' on: second, third, fourth" in capsys.readouterr().err
    assert not (base / "runs").exists()


def test_the_whole_chain_from_a_stage_needs_every_earlier_stage_finished(base):
    seeds = load_seeds()
    with pytest.raises(SystemExit, match="out/aside is not a finished stage; run the chain up to 'second'"):
        seeds.main(["--config", str(base / "pipeline.yaml"), "--base", str(base), "--seeds", "1", "--from", "second"])
