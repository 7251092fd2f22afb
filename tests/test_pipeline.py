"""The pipeline runner runs stages in order, skips finished ones, resumes cut-off ones and stops at a failure."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO_ROOT

from llm_recipes.pipeline import Pipeline, run
from llm_recipes.recipe import RecipeError

# A stage script: appends its name to a run log, fails if asked, and marks its output complete unless told to
# stop half-way (as a killed run would).
STAGE_SCRIPT = textwrap.dedent("""
    import argparse, json, os, sys
    p = argparse.ArgumentParser()
    p.add_argument("--output_dir"); p.add_argument("--upstream", default=""); p.add_argument("--mode", default="ok")
    a = p.parse_args()
    os.makedirs(a.output_dir, exist_ok=True)
    with open("calls.log", "a") as f:
        f.write(json.dumps({"output_dir": a.output_dir, "upstream": a.upstream}) + "\\n")
    if a.mode == "fail":
        print("something broke"); sys.exit(3)
    if a.mode == "cut" and not os.path.exists(os.path.join(a.output_dir, "partial")):
        open(os.path.join(a.output_dir, "partial"), "w").close(); sys.exit(0)
    json.dump({}, open(os.path.join(a.output_dir, "stage_complete.json"), "w"))
""")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stage.py").write_text(STAGE_SCRIPT)
    return tmp_path


def make_pipeline(workdir, second_mode="ok"):
    (workdir / "pipeline.yaml").write_text(textwrap.dedent(f"""
        log_dir: logs
        stages:
          - {{name: first, script: stage.py, output_dir: out/first, launcher: python}}
          - {{name: second, script: stage.py, output_dir: out/second, launcher: python,
              args: {{upstream: "{{first}}", mode: {second_mode}}}}}
          - {{name: third, script: stage.py, output_dir: out/third, launcher: python}}
    """))
    return Pipeline.from_yaml(workdir / "pipeline.yaml")


def calls(workdir):
    return [json.loads(line) for line in (workdir / "calls.log").read_text().splitlines()]


def test_stages_run_in_order_and_receive_earlier_outputs(workdir):
    pipeline = make_pipeline(workdir)
    assert run(pipeline, pipeline.select(), echo=lambda _: None) == 0
    made = calls(workdir)
    assert [c["output_dir"] for c in made] == ["out/first", "out/second", "out/third"]
    assert made[1]["upstream"] == "out/first"


def test_complete_stages_are_skipped(workdir):
    pipeline = make_pipeline(workdir)
    run(pipeline, pipeline.select(), echo=lambda _: None)
    run(pipeline, pipeline.select(), echo=lambda _: None)
    assert len(calls(workdir)) == 3


def test_a_cut_off_stage_is_launched_again(workdir):
    pipeline = make_pipeline(workdir, second_mode="cut")
    assert run(pipeline, pipeline.select(), echo=lambda _: None) == 1  # exited 0 but never marked complete
    assert run(pipeline, pipeline.select(), echo=lambda _: None) == 0
    assert [c["output_dir"] for c in calls(workdir)] == ["out/first", "out/second", "out/second", "out/third"]


def test_first_failure_stops_the_run_and_names_the_log(workdir):
    pipeline = make_pipeline(workdir, second_mode="fail")
    lines = []
    assert run(pipeline, pipeline.select(), echo=lines.append) == 3
    assert not (workdir / "out/third").exists()
    assert "see logs/second.log" in lines[-1]
    assert "something broke" in (workdir / "logs/second.log").read_text()


def test_from_and_only_select_stages(workdir):
    pipeline = make_pipeline(workdir)
    assert [s.name for s in pipeline.select(start="second")] == ["second", "third"]
    assert [s.name for s in pipeline.select(only="first")] == ["first"]
    with pytest.raises(RecipeError, match="Did you mean 'second'"):
        pipeline.select(only="secnd")


def test_force_runs_a_complete_stage_anew(workdir):
    pipeline = make_pipeline(workdir)
    run(pipeline, pipeline.select(), echo=lambda _: None)
    run(pipeline, pipeline.select(only="third"), force=True, echo=lambda _: None)
    assert [c["output_dir"] for c in calls(workdir)][-1] == "out/third"
    assert len(calls(workdir)) == 4


def test_a_stage_whose_input_was_made_again_runs_again(workdir):
    pipeline = make_pipeline(workdir)
    run(pipeline, pipeline.select(), echo=lambda _: None)
    run(pipeline, pipeline.select(only="first"), force=True, echo=lambda _: None)  # e.g. retrained
    lines = []
    run(pipeline, pipeline.select(), echo=lines.append)
    # second reads first's output, so it runs again; third reads nothing and stays as it was.
    assert [c["output_dir"] for c in calls(workdir)] == ["out/first", "out/second", "out/third", "out/first",
                                                         "out/second"]
    assert any("first changed since out/second was made" in line for line in lines)


def test_unknown_stage_key_is_refused(workdir):
    (workdir / "pipeline.yaml").write_text("stages:\n  - {name: a, script: s.py, output_dir: o, confg: x.yaml}\n")
    with pytest.raises(RecipeError, match="Did you mean 'config'"):
        Pipeline.from_yaml(workdir / "pipeline.yaml")


def test_an_overrides_file_merges_args_into_named_stages(workdir):
    pipeline = make_pipeline(workdir, second_mode="fail")
    (workdir / "short.yaml").write_text("stages:\n  second: {mode: ok}\n")
    pipeline = pipeline.with_overrides(workdir / "short.yaml")
    assert run(pipeline, pipeline.select(), echo=lambda _: None) == 0
    assert pipeline.stages[1].args == {"upstream": "{first}", "mode": "ok"}


def test_an_override_for_an_unknown_stage_names_the_closest_one(workdir):
    (workdir / "short.yaml").write_text("stages:\n  secnd: {mode: ok}\n")
    with pytest.raises(RecipeError, match="Did you mean 'second'"):
        make_pipeline(workdir).with_overrides(workdir / "short.yaml")


def test_a_list_arg_is_given_as_separate_values(workdir):
    from llm_recipes.pipeline import command

    pipeline = make_pipeline(workdir)
    pipeline.stages[2].args = {"reward_weights": [1.0, 0.5], "upstream": "{second}"}
    cmd = command(pipeline, pipeline.stages[2], {s.name: s.output_dir for s in pipeline.stages})
    assert cmd[-5:] == ["--reward_weights", "1.0", "0.5", "--upstream", "out/second"]


# A stage script that records what it was started with: whether it was forked from the runner (which has imported
# the pipeline module), its argv, __name__, and the environment that `accelerate launch` sets.
RECORDING_SCRIPT = textwrap.dedent("""
    import json, os, sys
    warm = "llm_recipes.pipeline" in sys.modules  # read before this script imports anything
    out = sys.argv[sys.argv.index("--output_dir") + 1]
    os.makedirs(out, exist_ok=True)
    if "--mode" in sys.argv and sys.argv[sys.argv.index("--mode") + 1] == "raise":
        raise ValueError("a stage that raised")
    seen = {"warm": warm, "argv": sys.argv[1:], "name": __name__, "path0": sys.path[0],
            "env": {k: v for k, v in os.environ.items() if k.startswith(("ACCELERATE_", "KMP_", "PYTHONUNBUFFERED"))}}
    json.dump(seen, open(os.path.join(out, "seen.json"), "w"))
    json.dump({}, open(os.path.join(out, "stage_complete.json"), "w"))
    print("stage printed this")
""")


def run_pipeline_script(workdir, *flags):
    return subprocess.run([sys.executable, str(REPO_ROOT / "scripts/run_pipeline.py"), "--config",
                           str(workdir / "pipeline.yaml"), *flags], cwd=workdir, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_a_warm_stage_starts_as_its_cold_command_would(workdir):
    (workdir / "record.py").write_text(RECORDING_SCRIPT)
    (workdir / "pipeline.yaml").write_text(textwrap.dedent(f"""
        accelerate_config: {REPO_ROOT}/accelerate_configs/cpu.yaml
        log_dir: logs
        stages:
          - {{name: trained, script: record.py, output_dir: out/trained, args: {{seed: 3}}}}
          - {{name: evaluated, script: record.py, output_dir: out/evaluated, launcher: python}}
          - {{name: broken, script: record.py, output_dir: out/broken, launcher: python, args: {{mode: raise}}}}
    """))
    seen = {}
    for flags in ((), ("--cold",)):
        result = run_pipeline_script(workdir, *flags)
        # The failure of the last stage is reported as a script's would be: its status, its traceback in its log.
        assert result.returncode == 1, result.stdout + result.stderr
        assert "[trained] stage printed this" in result.stdout
        assert "ValueError: a stage that raised" in (workdir / "logs/broken.log").read_text()
        seen[flags] = {name: json.loads((workdir / f"out/{name}/seen.json").read_text())
                       for name in ("trained", "evaluated")}
        for folder in ("out", "logs"):
            shutil.rmtree(workdir / folder)
    warm, cold = seen[()], seen[("--cold",)]
    assert all(s["warm"] for s in warm.values()) and not any(s["warm"] for s in cold.values())
    for name in ("trained", "evaluated"):
        assert {k: v for k, v in warm[name].items() if k != "warm"} == {k: v for k, v in cold[name].items()
                                                                          if k != "warm"}, name
    assert warm["trained"]["env"]["ACCELERATE_USE_CPU"] == "True"  # accelerate's environment, in both
    assert warm["trained"]["argv"][-2:] == ["--seed", "3"] and warm["trained"]["name"] == "__main__"


# A stage script that waits, for up to 30 s, until every stage named by --wait_for has started: run one after the
# other, the first of two such stages gives up and fails. It records the threads it was given.
MEETING_SCRIPT = textwrap.dedent("""
    import argparse, json, os, sys, time
    p = argparse.ArgumentParser()
    p.add_argument("--output_dir"); p.add_argument("--wait_for", nargs="*", default=[])
    p.add_argument("--mode", default="ok")
    a = p.parse_args()
    name = os.path.basename(a.output_dir)
    os.makedirs(a.output_dir, exist_ok=True)
    open(f"started-{name}", "w").close()
    deadline = time.time() + 30
    while not all(os.path.exists(f"started-{other}") for other in a.wait_for):
        if time.time() > deadline:
            print("the other stages never started"); sys.exit(4)
        time.sleep(0.05)
    print(f"{name} met " + " ".join(a.wait_for))
    if a.mode == "fail":
        print("something broke"); sys.exit(3)
    json.dump({"threads": os.environ.get("OMP_NUM_THREADS")}, open(os.path.join(a.output_dir, "seen.json"), "w"))
    json.dump({}, open(os.path.join(a.output_dir, "stage_complete.json"), "w"))
""")


def make_group_pipeline(workdir, b_mode="ok", b_reads=""):
    (workdir / "meet.py").write_text(MEETING_SCRIPT)
    (workdir / "pipeline.yaml").write_text(textwrap.dedent(f"""
        log_dir: logs
        stages:
          - {{name: a, script: meet.py, output_dir: out/a, launcher: python, parallel_group: rl,
              args: {{wait_for: [b]}}}}
          - {{name: b, script: meet.py, output_dir: out/b, launcher: python, parallel_group: rl,
              args: {{wait_for: [a], mode: {b_mode}{b_reads}}}}}
          - {{name: after, script: meet.py, output_dir: out/after, launcher: python}}
    """))
    return Pipeline.from_yaml(workdir / "pipeline.yaml")


def test_a_parallel_group_runs_its_stages_at_once_with_the_cores_shared(workdir):
    from llm_recipes.pipeline import thread_budget

    pipeline = make_group_pipeline(workdir)
    lines = []
    assert run(pipeline, pipeline.select(), echo=lines.append) == 0, "\n".join(lines)
    share = str(max(1, thread_budget() // 2))
    for name in ("a", "b"):
        assert json.loads((workdir / f"out/{name}/seen.json").read_text())["threads"] == share
    # Alone, a stage gets the runner's environment as it is (the test workers' own thread count, if any).
    assert json.loads((workdir / "out/after/seen.json").read_text())["threads"] == os.environ.get("OMP_NUM_THREADS")
    # Each stage's lines reach its own log and the console under its own name.
    assert "a met b" in (workdir / "logs/a.log").read_text() and "b met a" in (workdir / "logs/b.log").read_text()
    assert "[a] a met b" in lines and "[b] b met a" in lines


def test_a_failure_in_a_parallel_group_stops_the_run_after_the_group(workdir):
    pipeline = make_group_pipeline(workdir, b_mode="fail")
    lines = []
    assert run(pipeline, pipeline.select(), echo=lines.append) == 3
    assert (workdir / "out/a/stage_complete.json").exists()  # its partner finished
    assert not (workdir / "out/after").exists()
    assert any(line.startswith("[b] FAILED (exit status 3); see logs/b.log") for line in lines), lines
    assert "something broke" in (workdir / "logs/b.log").read_text()


def test_a_parallel_group_is_checked_before_anything_runs(workdir):
    with pytest.raises(RecipeError, match=r"stages.b reads '\{a\}', which runs at the same time"):
        make_group_pipeline(workdir, b_reads=', upstream: "{a}"')
    (workdir / "pipeline.yaml").write_text(textwrap.dedent("""
        stages:
          - {name: a, script: meet.py, output_dir: out/a, launcher: python, parallel_group: rl}
          - {name: between, script: meet.py, output_dir: out/between, launcher: python}
          - {name: b, script: meet.py, output_dir: out/b, launcher: python, parallel_group: rl}
    """))
    with pytest.raises(RecipeError, match="parallel_group 'rl' must be consecutive"):
        Pipeline.from_yaml(workdir / "pipeline.yaml")
    assert not (workdir / "out").exists()


def test_a_warm_forked_stage_gets_its_share_of_torchs_threads(workdir):
    # In the fork, torch was imported by the runner before the stage's share was known: the share is applied.
    (workdir / "threads.py").write_text("import torch; print('threads', torch.get_num_threads())\n")
    child = ("import sys, torch; torch.set_num_threads(2); from llm_recipes import warm_start; "
             "sys.exit(warm_start.run_command([sys.executable, 'threads.py'], {'OMP_NUM_THREADS': '1'}))")
    result = subprocess.run([sys.executable, "-c", child], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "threads 1" in result.stdout
    # OpenMP's nested form ("4,2") is the user's to give; the fork leaves it to OpenMP instead of failing on it.
    result = subprocess.run([sys.executable, "-c", child.replace("'1'", "'4,2'")], cwd=workdir, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "threads 2" in result.stdout
