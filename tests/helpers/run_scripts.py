"""Runs many invocations of the real stage scripts in one process, one after the other, as `python scripts/<x>.py
...` would run them (runpy, as __main__), and writes what each did to a JSON file: its exit status, its stderr, and
the traceback of an exception that escaped. Loading model weights is made to fail loudly, so that a check which
comes only after the weights are loaded shows up as such; a case with `disk_full` loads them, and writing weights
fails as it does on a full disk.

    python tests/helpers/run_scripts.py cases.json results.json

One process for all cases: the libraries are imported once (about 7 s), not once per case.
"""

import contextlib
import errno
import io
import json
import os
import runpy
import sys
import traceback
from pathlib import Path

import llm_recipes  # noqa: F401  (first, as in the scripts)

REPO_ROOT = Path(__file__).resolve().parents[2]
LOAD_WEIGHTS = None  # PreTrainedModel.from_pretrained as the library has it (set in main)


def refuse_weights(*args, **kwargs):
    raise RuntimeError("WEIGHTS LOADED: a bad input was not caught before the model's weights were loaded")


def fill_the_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", str(kwargs.get("filename") or args[1]))


def run_case(case: dict) -> dict:
    import transformers.modeling_utils
    from transformers import PreTrainedModel

    if case.get("disk_full"):  # weights load as usual; writing them fails as on a full disk
        PreTrainedModel.from_pretrained = LOAD_WEIGHTS
        transformers.modeling_utils.safe_save_file = fill_the_disk
    else:
        PreTrainedModel.from_pretrained = classmethod(refuse_weights)
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.update(case.get("env", {}))
    os.chdir(case["cwd"])
    sys.argv = [str(REPO_ROOT / "scripts" / case["script"]), *case["argv"]]
    stderr, stdout, status, escaped = io.StringIO(), io.StringIO(), 0, None
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - what escaped is the finding
        status, escaped = 1, traceback.format_exc()
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return {"name": case["name"], "status": status, "stderr": stderr.getvalue(), "traceback": escaped}


def main() -> None:
    global LOAD_WEIGHTS
    from transformers import PreTrainedModel

    LOAD_WEIGHTS = PreTrainedModel.__dict__["from_pretrained"]
    cases_file, results_file = map(Path, sys.argv[1:3])  # before the cases set sys.argv
    results = [run_case(case) for case in json.loads(cases_file.read_text())]
    results_file.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
