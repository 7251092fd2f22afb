"""Stages forked from one warm interpreter, so that a pipeline pays its libraries' imports once, not once per stage.

A stage of the tiny chain spends ~10 s of this machine's time importing torch, transformers, TRL, datasets and
lm-eval before it reads its recipe (the accelerate launcher another ~2 s), against seconds of training: measured
on 2 CPU cores, the imports were most of the short chain's time. The runner imports them once (`preload`), then
starts each stage as a fork of itself (`start`): a new process, with its own log, exit status and process group
membership, that runs the stage script as `python script.py args` would, in the environment `accelerate launch`
would give it (accelerate's own code computes it, in the child, so that its messages land in the stage's log).

What cannot be run so is launched cold, by exec of the printed command: accelerate's multi-process, DeepSpeed,
FSDP, TPU and multi-node launchers. A machine with an NVIDIA driver launches every stage cold: CUDA cannot be used
in a process forked after the driver was initialised, and on a GPU the imports are a small share of a stage.
"""

import atexit
import importlib
import os
import runpy
import sys
import traceback
from pathlib import Path

ACCELERATE_LAUNCH = ["-m", "accelerate.commands.launch"]
STAGE_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
# What the repository's stage scripts import at their top and through their trainers; a module that is not
# installed (an optional extra) is left to the stage that needs it.
MODULES = ["torch", "transformers", "transformers.modeling_utils", "transformers.trainer", "datasets", "peft",
           "accelerate", "accelerate.commands.launch", "trl", "trl.trainer.sft_trainer", "trl.trainer.dpo_trainer",
           "trl.trainer.grpo_trainer", "trl.trainer.reward_trainer", "lm_eval.evaluator",
           "lm_eval.models.huggingface"]


def available() -> bool:
    """Forking is the POSIX way (Linux here), and is refused where a GPU driver is present."""
    return sys.platform == "linux" and not Path("/dev/nvidiactl").exists()


def imports_the_stack(script: str) -> bool:
    """Whether `script` is one of the repository's stage scripts, which import what `preload` imports. Another
    script (a user's own, a test's) is forked all the same, and imports what it needs itself."""
    return Path(script).resolve().parent == STAGE_SCRIPTS


def preload() -> None:
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


class ForkedStage:
    """A forked stage as the runner sees a `subprocess.Popen` one: `stdout`, its stdout and stderr as lines of
    text, and `wait()`, its exit status (minus the signal that killed it)."""

    def __init__(self, pid: int, read_end: int):
        self.pid = pid
        self.stdout = open(read_end, errors="backslashreplace")

    def wait(self) -> int:
        return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


def start(cmd: list[str], env: dict) -> ForkedStage:
    """Fork a process that runs `cmd` (a `python script.py ...` or `python -m accelerate.commands.launch ...`
    command) with `env`."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(write_end)
        return ForkedStage(pid, read_end)
    # The child. Nothing here may return into the runner: every way out is os._exit.
    status = 1
    try:
        os.close(read_end)
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        for stream in (sys.stdout, sys.stderr):  # objects that loggers already hold: now writing to the pipe
            stream.reconfigure(line_buffering=True)
        status = run_command(cmd, env)
    except BaseException:  # noqa: BLE001  whatever the stage raised is its failure, reported as a script's would be
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()  # what a normal interpreter exit runs (logging's shutdown, libraries' hooks)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def thread_count(env) -> int | None:
    """OMP_NUM_THREADS as a plain count of threads (at least 1); None where it is unset or in OpenMP's nested form
    ("4,2"), which is OpenMP's to read."""
    value = env.get("OMP_NUM_THREADS", "")
    return max(1, int(value)) if value.isdigit() else None


def run_command(cmd: list[str], env: dict) -> int:
    """In the forked child: run the stage script in this interpreter, or exec the command where it must run cold."""
    args = cmd[1:]
    os.environ.clear()
    os.environ.update(env)
    threads = thread_count(env)
    if threads and "torch" in sys.modules:
        # torch was imported before the fork, its thread pool sized then: a stage given a share of the cores (a
        # pipeline's parallel_group) gets it here, as a new process would from the variable.
        sys.modules["torch"].set_num_threads(threads)
    if args[:2] == ACCELERATE_LAUNCH:
        args = simple_launch(args[2:])
        if args is None:
            os.execv(sys.executable, cmd)  # does not return
    script = args[0]
    sys.argv = list(args)
    sys.path[0] = str(Path(script).resolve().parent)  # as `python script.py` sets it
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)  # sys.exit("message"): printed, status 1, as the interpreter does
        return 1
    return 0


def simple_launch(launcher_args: list[str]) -> list[str] | None:
    """The script and its args after applying what `accelerate launch launcher_args` would do when it starts one
    process with its simple launcher (its environment variables, set here); None when it would do more."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(launcher_args))
    several = (args.num_processes or 1) > 1 or (args.num_machines or 1) > 1 or args.mpirun_hostfile
    other_launcher = not args.cpu and any(
        [args.use_deepspeed, args.use_fsdp, args.use_megatron_lm, args.multi_gpu, args.tpu])
    sagemaker = defaults is not None and str(defaults.compute_environment).endswith("AMAZON_SAGEMAKER")
    if several or other_launcher or sagemaker or args.module or args.no_python:
        return None
    command, launch_env = prepare_simple_launcher_cmd_env(args)
    os.environ.update(launch_env)
    return command[1:]  # without the interpreter
