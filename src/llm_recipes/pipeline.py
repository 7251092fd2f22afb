"""The pipeline runner: a model's whole life, stage after stage, each launched as a user would launch it.

A pipeline file lists stages in order. Each stage names its script, its recipe, its output folder and the
overrides that pass earlier stages' outputs to it (`{tokenizer}` is the tokenizer stage's output folder). A stage
whose output holds `stage_complete.json` is skipped, unless it says `always_run`; one that was cut off is
launched again and resumes from its last complete checkpoint. The first failure stops the run and names the
stage's log file.

Consecutive stages that share a `parallel_group` run at the same time, the run's threads (OMP_NUM_THREADS if set,
else the cores) shared out between them: each gets OMP_NUM_THREADS, and torch's thread count in a warm fork. That
pays where a stage cannot keep all cores busy: generating a token at a time is mostly Python and small kernels (on 2
cores, 1 thread generates at 0.8x the speed of 2), so two RL stages side by side take less time than one after the
other. Training that is matmul-bound gains nothing from it.
"""

import dataclasses
import os
import re
import selectors
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
    parallel_group: str | None = None  # consecutive stages of one group run at once, sharing the cores

    def reads(self) -> list[str]:
        """The earlier stages whose output folders this stage's args name (`{tokenizer}`), in order."""
        return STAGE_REFERENCE.findall(" ".join(map(str, self.args.values())))


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
            for name in step.reads():
                if name not in earlier:
                    raise RecipeError(f"{path}: stages.{step.name}: '{{{name}}}' names no earlier stage (earlier: "
                                      f"{', '.join(earlier) or 'none'}).")
            earlier.append(step.name)
        seen_groups = set()
        for batch in batches(self.stages):
            group = batch[0].parallel_group
            if group is None:
                continue
            if group in seen_groups:
                raise RecipeError(f"{path}: the stages of parallel_group '{group}' must be consecutive.")
            seen_groups.add(group)
            members = [s.name for s in batch]
            for step in batch:
                inside = [n for n in step.reads() if n in members]
                if inside:
                    raise RecipeError(f"{path}: stages.{step.name} reads '{{{inside[0]}}}', which runs at the same "
                                      f"time (parallel_group '{group}'): a stage can only read a finished one.")
                if (step.num_processes or 1) > 1:
                    raise RecipeError(f"{path}: stages.{step.name} asks for {step.num_processes} processes; a stage "
                                      f"of parallel_group '{group}' shares the cores and runs as one process.")

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


def batches(stages: list[PipelineStep]) -> list[list[PipelineStep]]:
    """The stages in order, consecutive members of one parallel_group together: what runs at one time."""
    out = []
    for stage in stages:
        if out and stage.parallel_group is not None and out[-1][0].parallel_group == stage.parallel_group:
            out[-1].append(stage)
        else:
            out.append([stage])
    return out


def thread_budget() -> int:
    """The threads this run may use: OMP_NUM_THREADS where the user set it, else the cores it may run on."""
    if threads := warm_start.thread_count(os.environ):
        return threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    for name in dict.fromkeys(stage.reads()):
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


NEWLINE = re.compile(rb"\r\n|\r|\n")  # as a text stream reads lines: a progress bar's "\r" ends one too


def stream_output(running: dict, echo) -> None:
    """Copy each running stage's output, line by line as it comes, to its log and to `echo` under its name,
    until every stage has closed its output. One thread reads them all (a selector), so that a warm runner stays
    a process without threads of its own and can fork the next stages safely."""
    selector = selectors.DefaultSelector()
    pending = {}
    for name, launched in running.items():
        selector.register(launched["process"].stdout.fileno(), selectors.EVENT_READ, name)
        pending[name] = b""
    while selector.get_map():
        for key, _ in selector.select():
            name = key.data
            chunk = os.read(key.fd, 1 << 16)
            data = pending[name] + chunk
            if chunk:
                hold = data.endswith(b"\r")  # maybe the first half of a "\r\n"
                lines = NEWLINE.split(data[:-1] if hold else data)
                pending[name] = lines.pop() + (b"\r" if hold else b"")
            else:
                selector.unregister(key.fd)
                running[name]["ended"] = time.time()
                lines = [line for line in NEWLINE.split(data) if line] if data else []
            log = running[name]["log"]
            for line in lines:
                text = line.decode(errors="backslashreplace")
                log.write(text + "\n")
                echo(f"[{name}] {text.rstrip()}")
            log.flush()
    selector.close()


def run(pipeline: Pipeline, stages: list[PipelineStep], force: bool = False, echo=print,
        warm: bool = False) -> int:
    """Run `stages` in order, the consecutive members of a parallel_group at once; return 0, or the exit status of
    the first stage that failed. `warm`: fork each stage from this interpreter once it has imported the libraries
    (llm_recipes.warm_start), instead of starting each anew; the runner must then be a process of its own
    (scripts/run_pipeline.py), not one with threads of its own."""
    warm = warm and warm_start.available()
    ours = 0  # stage scripts of this repository launched so far
    outputs = {s.name: s.output_dir for s in pipeline.stages}
    log_dir = Path(pipeline.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    for batch in batches(stages):
        to_run = []
        for stage in batch:
            changed = newer_input(stage, outputs) if is_complete(stage.output_dir) else None
            if changed:
                echo(f"[{stage.name}] {changed} changed since {stage.output_dir} was made; running it again")
            if (force or changed) and Path(stage.output_dir).exists():
                shutil.rmtree(stage.output_dir)
            if is_complete(stage.output_dir) and not stage.always_run:
                echo(f"[{stage.name}] complete in {stage.output_dir}, skipped")
                continue
            to_run.append(stage)
        if not to_run:
            continue
        threads = max(1, thread_budget() // len(to_run)) if len(to_run) > 1 else None
        if threads:
            echo(f"[pipeline] {', '.join(s.name for s in to_run)} run at the same time, {threads} thread(s) each")
        running = {}
        for stage in to_run:
            cmd = command(pipeline, stage, outputs)
            resumed = " (resuming)" if Path(stage.output_dir).exists() else ""
            echo(f"[{stage.name}] {shlex.join(cmd)}{resumed}")
            # The imports are paid once, before the second stage script of ours that this run launches: a run of
            # one stage (a report rewritten, a stage retried) costs what it did cold, and every later stage starts
            # warm.
            if warm and warm_start.imports_the_stack(repo_path(stage.script)):
                ours += 1
                if ours == 2:
                    started = time.time()
                    warm_start.preload()
                    echo(f"[pipeline] libraries imported in {time.time() - started:.0f}s; later stages are forked "
                         f"warm")
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            if threads:
                env["OMP_NUM_THREADS"] = str(threads)
            log_path = log_dir / f"{stage.name}.log"
            log = open(log_path, "a")
            log.write(f"\n$ {shlex.join(cmd)}\n")
            log.flush()
            process = warm_start.start(cmd, env) if warm else subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
            running[stage.name] = {"stage": stage, "process": process, "log": log, "log_path": log_path,
                                   "started": time.time()}
        stream_output(running, echo)
        failure = 0
        for name, launched in running.items():
            stage, status = launched["stage"], launched["process"].wait()
            launched["process"].stdout.close()
            launched["log"].close()
            if status != 0 or not is_complete(stage.output_dir):
                reason = f"exit status {status}" if status else "no stage_complete.json was written"
                echo(f"[{name}] FAILED ({reason}); see {launched['log_path']}")
                failure = failure or status or 1
            else:
                echo(f"[{name}] done in {launched['ended'] - launched['started']:.0f}s -> {stage.output_dir}")
        if failure:
            return failure
    return 0
