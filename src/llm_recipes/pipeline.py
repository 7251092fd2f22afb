"""The pipeline runner: a model's whole life, stage after stage, each launched as a user would launch it.

A pipeline file lists stages in order. Each stage names its script, its recipe, its output folder and the
overrides that pass earlier stages' outputs to it (`{tokenizer}` is the tokenizer stage's output folder). A stage
whose output holds `stage_complete.json` is skipped, unless it says `always_run`; one that was cut off is
launched again and resumes from its last complete checkpoint. The first failure stops the run and names the
stage's log file.
"""

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llm_recipes import warm_start
from llm_recipes.recipe import RecipeError, closest_key, repo_path, unknown_key_message
from llm_recipes.stage import COMPLETE_MARKER, is_complete


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file that holds a mapping, or a RecipeError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such file ({what}).")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise RecipeError(f"{path} must hold a YAML mapping ({what}).")
    return raw


@dataclass
class PipelineStep:
    """One step of a pipeline file: a stage script launched with its recipe into its output folder."""

    name: str
    script: str
    output_dir: str
    config: str | None = None
    args: dict = field(default_factory=dict)
    launcher: str = "accelerate"  # "accelerate" or "python"
    num_processes: int | None = None
    always_run: bool = False  # for stages that only summarise others (the report card): never skipped


@dataclass
class Pipeline:
    stages: list[PipelineStep]
    accelerate_config: str | None = None
    log_dir: str = "runs/logs"

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Pipeline":
        """The pipeline of a YAML file, checked as a whole before its first stage runs (see `check`)."""
        raw = read_yaml_mapping(path, "a pipeline file")
        top_keys = ["stages", "accelerate_config", "log_dir"]
        for key in raw:
            if key not in top_keys:
                raise RecipeError(unknown_key_message(key, top_keys, str(path)))
        step_keys = list(PipelineStep.__dataclass_fields__)
        required = [f.name for f in dataclasses.fields(PipelineStep) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        stages = []
        for i, entry in enumerate(raw.get("stages") or []):
            if not isinstance(entry, dict):
                raise RecipeError(f"{path}: stages[{i}] must be a mapping (name, script, output_dir, ...).")
            for key in entry:
                if key not in step_keys:
                    raise RecipeError(unknown_key_message(key, step_keys, f"{path}: stages[{i}]"))
            missing = [key for key in required if key not in entry]
            if missing:
                raise RecipeError(f"{path}: stages[{i}] ({entry.get('name', 'unnamed')}) needs "
                                  f"{', '.join(missing)}.")
            stages.append(PipelineStep(**entry))
        names = [s.name for s in stages]
        if not stages or len(set(names)) != len(names):
            raise RecipeError(f"{path}: needs a list of stages with distinct names (got {names}).")
        pipeline = cls(stages, raw.get("accelerate_config"), raw.get("log_dir", "runs/logs"))
        pipeline.check(path)
        return pipeline

    def check(self, path: str | Path) -> None:
        """Every script, recipe and accelerate config exists, every launcher is known, and every `{stage}` in a
        stage's args names an earlier stage: a mistake in the last stage is found before the first one runs."""
        files = [("accelerate_config", self.accelerate_config)] if self.accelerate_config else []
        for step in self.stages:
            files += [(f"stages.{step.name}.script", step.script)]
            files += [(f"stages.{step.name}.config", step.config)] if step.config else []
            if step.launcher not in ("accelerate", "python"):
                raise RecipeError(f"{path}: stages.{step.name}.launcher must be 'accelerate' or 'python', got "
                                  f"{step.launcher!r}.")
        for key, file in files:
            if not Path(repo_path(file)).is_file():
                raise RecipeError(f"{path}: {key}: no file {file}.")
        earlier = []
        for step in self.stages:
            for name in STAGE_REFERENCE.findall(" ".join(map(str, step.args.values()))):
                if name not in earlier:
                    raise RecipeError(f"{path}: stages.{step.name}: '{{{name}}}' names no earlier stage (earlier: "
                                      f"{', '.join(earlier) or 'none'}).")
            earlier.append(step.name)

    def with_overrides(self, path: str | Path) -> "Pipeline":
        """The pipeline with the args of an overrides file merged into its stages: a YAML mapping of stage names to
        args (`stages: {pretrain: {max_steps: 120}}`), so that a shorter or reseeded variant of a chain (CI's short
        chain, a seed of the seeds run) is values in a file, not a second copy of the pipeline."""
        raw = read_yaml_mapping(path, "an overrides file")
        if set(raw) - {"stages"} or not isinstance(raw.get("stages", {}), dict):
            raise RecipeError(f"{path}: an overrides file holds `stages:`, a mapping of stage names to their args.")
        names = [s.name for s in self.stages]
        for name, args in (raw.get("stages") or {}).items():
            if name not in names:
                raise RecipeError(unknown_key_message(name, names, f"{path}: stages"))
            if not isinstance(args, dict):
                raise RecipeError(f"{path}: stages.{name} must be a mapping of args, got {args!r}.")
            stage = self.stages[names.index(name)]
            stage.args = {**stage.args, **args}
        self.check(path)
        return self

    def select(self, only: str | None = None, start: str | None = None) -> list[PipelineStep]:
        names = [s.name for s in self.stages]
        for wanted in (only, start):
            if wanted is not None and wanted not in names:
                suggestion = closest_key(wanted, names)
                did_you_mean = f" Did you mean '{suggestion}'?" if suggestion else ""
                raise RecipeError(f"unknown stage '{wanted}'.{did_you_mean} The stages are: {', '.join(names)}.")
        if only:
            return [s for s in self.stages if s.name == only]
        if start:
            return self.stages[names.index(start):]
        return list(self.stages)


STAGE_REFERENCE = re.compile(r"\{(\w+)\}")  # `{tokenizer}` in a stage's args: that stage's output folder


def resolve(value, outputs: dict[str, str]) -> str:
    """Replace `{stage}` with that stage's output folder."""
    def replace(match):
        name = match.group(1)
        if name not in outputs:
            raise RecipeError(f"'{{{name}}}' names no earlier stage (known: {', '.join(outputs)}).")
        return outputs[name]

    return STAGE_REFERENCE.sub(replace, str(value))


def newer_input(stage: PipelineStep, outputs: dict[str, str]) -> str | None:
    """The earlier stage, among those whose output `stage` reads (`{name}` in its args), that was completed after
    `stage` was: `stage` is then out of date and must run again. None when it is up to date."""
    own = Path(stage.output_dir) / COMPLETE_MARKER
    for name in dict.fromkeys(STAGE_REFERENCE.findall(" ".join(map(str, stage.args.values())))):
        marker = Path(outputs.get(name, "")) / COMPLETE_MARKER
        if marker.is_file() and marker.stat().st_mtime > own.stat().st_mtime:
            return name
    return None


def command(pipeline: Pipeline, stage: PipelineStep, outputs: dict[str, str]) -> list[str]:
    if stage.launcher == "python":
        cmd = [sys.executable]
    elif stage.launcher == "accelerate":
        cmd = [sys.executable, "-m", "accelerate.commands.launch"]
        if pipeline.accelerate_config:
            cmd += ["--config_file", repo_path(pipeline.accelerate_config)]
        if stage.num_processes:
            cmd += ["--num_processes", str(stage.num_processes)]
    else:
        raise RecipeError(f"stage {stage.name}: launcher must be 'accelerate' or 'python', got {stage.launcher!r}.")
    cmd.append(repo_path(stage.script))
    if stage.config:
        cmd += ["--config", repo_path(stage.config)]
    cmd += ["--output_dir", stage.output_dir]
    for key, value in stage.args.items():
        # A list is given as the parser takes one (`--reward_weights 1.0 0.5`), not as its Python repr.
        values = value if isinstance(value, list) else [value]
        cmd += [f"--{key}", *(resolve(v, outputs) for v in values)]
    return cmd


def run(pipeline: Pipeline, stages: list[PipelineStep], force: bool = False, echo=print,
        warm: bool = False) -> int:
    """Run `stages` in order; return 0, or the exit status of the first stage that failed. `warm`: fork each stage
    from this interpreter once it has imported the libraries (llm_recipes.warm_start), instead of starting each
    anew; the runner must then be a process of its own (scripts/run_pipeline.py), not one with threads of its own."""
    warm = warm and warm_start.available()
    ours = 0  # stage scripts of this repository launched so far
    outputs = {s.name: s.output_dir for s in pipeline.stages}
    log_dir = Path(pipeline.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        changed = newer_input(stage, outputs) if is_complete(stage.output_dir) else None
        if changed:
            echo(f"[{stage.name}] {changed} changed since {stage.output_dir} was made; running it again")
        if (force or changed) and Path(stage.output_dir).exists():
            shutil.rmtree(stage.output_dir)
        if is_complete(stage.output_dir) and not stage.always_run:
            echo(f"[{stage.name}] complete in {stage.output_dir}, skipped")
            continue
        cmd = command(pipeline, stage, outputs)
        log_path = log_dir / f"{stage.name}.log"
        resumed = " (resuming)" if Path(stage.output_dir).exists() else ""
        echo(f"[{stage.name}] {shlex.join(cmd)}{resumed}")
        # The imports are paid once, before the second stage script of ours that this run launches: a run of one
        # stage (a report rewritten, a stage retried) costs what it did cold, and every later stage starts warm.
        if warm and warm_start.imports_the_stack(repo_path(stage.script)):
            ours += 1
            if ours == 2:
                started = time.time()
                warm_start.preload()
                echo(f"[pipeline] libraries imported in {time.time() - started:.0f}s; later stages are forked warm")
        started = time.time()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(log_path, "a") as log:
            log.write(f"\n$ {shlex.join(cmd)}\n")
            log.flush()
            process = warm_start.start(cmd, env) if warm else subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            with process.stdout:
                for line in process.stdout:
                    log.write(line)
                    echo(f"[{stage.name}] {line.rstrip()}")
            status = process.wait()
        if status != 0 or not is_complete(stage.output_dir):
            reason = f"exit status {status}" if status else "no stage_complete.json was written"
            echo(f"[{stage.name}] FAILED ({reason}); see {log_path}")
            return status or 1
        echo(f"[{stage.name}] done in {time.time() - started:.0f}s -> {stage.output_dir}")
    return 0
