"""Recipes: YAML files of values parsed into the dataclasses of Transformers, TRL and our stages.

We keep TRL's convention (`--config recipe.yaml`, `--key value` overrides, an `env:` block) and add what a
recipe author needs before any compute is spent: an unknown key names the key, the file and the closest valid
key; a value of the wrong type names the key and what it expects.
"""

import dataclasses
import difflib
import os
import sys
import typing
from collections.abc import Iterable
from pathlib import Path

import yaml
from trl import TrlParser

from llm_recipes.values import expected_type, value_fits

# Keys that hold credentials: they end up in logs, process lists and model cards, so recipes may not set them.
SECRET_KEYS = {"hub_token"}


# Keys that Transformers 5 or TRL 1.x renamed or removed, as recipes written for earlier versions (alignment-handbook's,
# TRL's examples) still spell them: the new key, and what to know.
RENAMED_KEYS = {
    "torch_dtype": ("dtype", "Transformers 5 renamed it."),
    "max_seq_length": ("max_length", "TRL 1.x renamed it."),
    "evaluation_strategy": ("eval_strategy", "Transformers renamed it."),
    "per_gpu_train_batch_size": ("per_device_train_batch_size", "Transformers renamed it."),
    "per_gpu_eval_batch_size": ("per_device_eval_batch_size", "Transformers renamed it."),
    "no_cuda": ("use_cpu", "Transformers renamed it."),
    "use_liger": ("use_liger_kernel", "TRL renamed it."),
    "push_to_hub_revision": ("hub_revision", "alignment-handbook's key; TRL's is hub_revision."),
    "warmup_ratio": ("warmup_steps", "Transformers 5 removed warmup_ratio: a warmup_steps below 1 is a fraction of "
                     "the training steps (warmup_steps: 0.1 warms up over the first 10%)."),
    "max_prompt_length": (None, "TRL 1.x removed it from DPO and GRPO: `max_length` bounds prompt and reply together "
                          "(DPO, with `truncation_mode` saying which end is cut), and GRPO's prompts are kept whole."),
    "overwrite_output_dir": (None, "Transformers 5 removed it. A stage reuses its output_dir and resumes from the "
                             "last complete checkpoint there; to start over, delete the folder (or run the pipeline "
                             "with --force)."),
}


def renamed_key_message(key: str, valid_keys: Iterable[str], where: str) -> str | None:
    """The message for a key of an earlier version of the libraries, if `key` is one (and its new name is valid)."""
    if key not in RENAMED_KEYS:
        return None
    new, note = RENAMED_KEYS[key]
    if new is None:
        return f"{where}: '{key}' is gone. {note}"
    if new not in valid_keys:
        return None
    return f"{where}: unknown key '{key}'. Use '{new}': {note}"


class RecipeError(ValueError):
    """A recipe (or a command-line override) that cannot be run as written."""


REPO_ROOT = Path(__file__).resolve().parents[2]


def repo_path(path: str) -> str:
    """A file a recipe names (script, template, config): relative to the working directory if it is there,
    else to the repository, so that recipes work from any working directory."""
    return path if Path(path).exists() else str(REPO_ROOT / path)


def closest_key(key: str, valid_keys: Iterable[str]) -> str | None:
    """The valid key a misspelt `key` most likely meant, or None when nothing is close."""
    valid_keys = list(valid_keys)
    # A cut-off key (`max_seq`) most likely means a key it begins, whatever difflib's ratio says.
    completions = sorted((k for k in valid_keys if k.startswith(key)), key=len)
    if completions:
        return completions[0]
    matches = difflib.get_close_matches(key, valid_keys, n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_key_message(
    key: str, valid_keys: Iterable[str], where: str, help_hint: str = "Run the script with --help to list every key."
) -> str:
    suggestion = closest_key(key, valid_keys)
    did_you_mean = f" Did you mean '{suggestion}'?" if suggestion else ""
    return f"{where}: unknown key '{key}'.{did_you_mean} {help_hint}".rstrip()


def _annotation(action):
    """What an argparse action accepts, as the annotation `llm_recipes.values` checks a value against: its choices,
    int, float or bool (HfArgumentParser has already turned the dataclass field's annotation into these)."""
    if action.choices is not None:
        return typing.Literal[tuple(str(c) for c in action.choices)]
    if action.type in (int, float):
        return action.type
    if getattr(action.type, "__name__", "") == "string_to_bool":
        return bool
    return None


def _value_fits(action, value) -> bool:
    if value is None:
        return True  # every optional field accepts null; required ones are checked by the dataclass
    # argparse converts what the recipe wrote with the action's type, so a string it converts fits.
    if action.nargs in ("+", "*") and isinstance(value, list):
        return all(value_fits(_annotation(action), v, from_text=True) for v in value)
    return value_fits(_annotation(action), value, from_text=True)


def world_size() -> int:
    """The number of processes of this run, as `accelerate launch`, torchrun and DeepSpeed's launcher set it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def derive_gradient_accumulation(values: dict) -> None:
    """`global_batch_size` (examples per optimizer step, over all processes) fixes the optimization whatever the
    number of devices: gradient accumulation is derived from it, the per-device batch and the world size, so a
    recipe trains the same on 1, 2 or 64 devices."""
    global_batch = values.get("global_batch_size")
    if global_batch is None:
        return
    if "gradient_accumulation_steps" not in values:
        raise RecipeError("global_batch_size: this stage takes no optimizer steps; remove the key.")
    per_device, processes = values["per_device_train_batch_size"], world_size()
    per_step = per_device * processes
    if global_batch % per_step:
        raise RecipeError(
            f"global_batch_size: {global_batch} is not a multiple of per_device_train_batch_size x processes "
            f"({per_device} x {processes} = {per_step}); change one of them so that gradient accumulation is a whole "
            "number of micro-batches.")
    derived = global_batch // per_step
    if values["gradient_accumulation_steps"] not in (1, derived):
        raise RecipeError(
            f"global_batch_size: {global_batch} on {processes} process(es) of {per_device} needs "
            f"gradient_accumulation_steps {derived}, but the recipe sets {values['gradient_accumulation_steps']}; "
            "set one of the two keys, not both.")
    values["gradient_accumulation_steps"] = derived


class RecipeParser(TrlParser):
    """`TrlParser` that checks every recipe key and value before building the dataclasses.

    Use `parse()` in scripts (a bad recipe prints one clear line and exits with status 2) and
    `parse_or_raise()` where the caller wants a `RecipeError`.
    """

    def __init__(self, dataclass_types, **kwargs):
        # TRL's ModelConfig and its trainer configs both define `trust_remote_code`. A key that several of the
        # dataclasses define is one key, and each of them receives its value (see `_into_dataclasses`).
        kwargs.setdefault("conflict_handler", "resolve")
        super().__init__(dataclass_types, **kwargs)

    def error(self, message):
        # argparse would print the whole usage (hundreds of keys) and exit; one clear line is enough.
        raise RecipeError(f"command line: {message}")

    def _actions_by_key(self) -> dict:
        return {a.dest: a for a in self._actions if a.dest not in ("help", "config")}

    def _check_keys_and_values(self, values: dict, where: str) -> None:
        """Every key known and every value of its type; all the problems of a recipe are reported at once."""
        actions = self._actions_by_key()
        problems = []
        for key, value in values.items():
            if key in SECRET_KEYS:
                raise RecipeError(f"{where}: '{key}' must not be written in a recipe or on the command line, "
                                  "where it would be logged. Set HF_TOKEN in the environment or run `hf auth login`.")
            if key not in actions:
                problems.append(renamed_key_message(key, actions, where) or unknown_key_message(key, actions, where))
            elif not _value_fits(actions[key], value):
                expected = expected_type(_annotation(actions[key]))
                problems.append(f"{where}: key '{key}' expects {expected}, got {value!r}.")
        if len(problems) > 1:
            raise RecipeError(f"{len(problems)} problems in the recipe:\n" + "\n".join(problems))
        if problems:
            raise RecipeError(problems[0])

    def _check_command_line(self, args: list[str]) -> None:
        actions = self._actions_by_key()
        for token in args:
            if token.startswith("--"):
                key = token[2:].split("=", 1)[0]
                if key.replace("-", "_") in SECRET_KEYS:
                    self._check_keys_and_values({key.replace("-", "_"): None}, "command line")
                # argparse accepts both `--no_x` (negated booleans) and `--x`; both are in option strings.
                known = {s[2:] for a in self._actions for s in a.option_strings if s.startswith("--")}
                if key not in known:
                    raise RecipeError(renamed_key_message(key, actions, "command line")
                                      or unknown_key_message(key, actions, "command line"))

    def _into_dataclasses(self, args: list[str]) -> tuple:
        """Like HfArgumentParser.parse_args_into_dataclasses, but a key that several dataclasses define goes to all
        of them (HfArgumentParser gives it to the first and fails on the next)."""
        namespace, remaining = self.parse_known_args(args=args)
        if remaining:
            raise RecipeError(f"command line: unexpected arguments {remaining}.")
        values = vars(namespace)
        derive_gradient_accumulation(values)
        return tuple(
            dtype(**{f.name: values[f.name] for f in dataclasses.fields(dtype) if f.init and f.name in values})
            for dtype in self.dataclass_types
        )

    @staticmethod
    def _nested_overrides(args: list[str]) -> tuple[list[str], list[tuple[list[str], str]]]:
        """Split `--dataset_mixture.max_examples 64` (a key inside a mapping-valued key) from the other arguments."""
        rest, nested, i = [], [], 0
        while i < len(args):
            token = args[i]
            if token.startswith("--") and "." in token.split("=", 1)[0]:
                key, _, value = token[2:].partition("=")
                if not value:
                    if i + 1 >= len(args):
                        raise RecipeError(f"command line: {token} needs a value.")
                    value, i = args[i + 1], i + 1
                nested.append((key.split("."), value))
            else:
                rest.append(token)
            i += 1
        return rest, nested

    @staticmethod
    def _apply_nested(config: dict, nested: list[tuple[list[str], str]], where: str) -> None:
        for path, value in nested:
            target = config
            for depth, key in enumerate(path[:-1]):
                if not isinstance(target.get(key), dict):
                    raise RecipeError(f"command line: --{'.'.join(path)}: '{'.'.join(path[:depth + 1])}' is not a "
                                      f"mapping in {where}; only keys inside a mapping can be set this way.")
                target = target[key]
            target[path[-1]] = yaml.safe_load(value)

    def parse_or_raise(self, args: list[str] | None = None) -> tuple:
        """Parse `--config FILE` and overrides into one instance of each dataclass, or raise `RecipeError`. An override
        may reach inside a mapping: `--dataset_mixture.max_examples 64`."""
        args, nested = self._nested_overrides(list(sys.argv[1:] if args is None else args))
        where = "command line"
        if "--config" in args:
            i = args.index("--config")
            if i + 1 >= len(args):
                raise RecipeError("--config needs the path of a recipe YAML file.")
            config_path = args[i + 1]
            args = args[:i] + args[i + 2 :]
            where = config_path
            if not Path(config_path).is_file():
                raise RecipeError(f"Recipe file not found: {config_path}")
            with open(config_path) as f:
                try:
                    config = yaml.safe_load(f) or {}
                except yaml.YAMLError as e:
                    raise RecipeError(f"{config_path} is not valid YAML: {e}") from e
            if not isinstance(config, dict):
                raise RecipeError(f"{config_path} must hold a YAML mapping of key: value.")
            self._apply_nested(config, nested, config_path)
            env = config.pop("env", {}) or {}
            if not isinstance(env, dict):
                raise RecipeError(f"{config_path}: 'env' must be a mapping of variable names to values.")
            self._check_keys_and_values(config, config_path)
            self._check_command_line(args)
            for name, value in env.items():
                os.environ[str(name)] = str(value)
            self.set_defaults_with_config(**config)
        else:
            if nested:
                raise RecipeError(f"command line: --{'.'.join(nested[0][0])} reaches inside a key of a recipe; "
                                  "give the recipe with --config.")
            self._check_command_line(args)
        try:
            parsed = self._into_dataclasses(args)
        except RecipeError:
            raise
        except ValueError as e:  # raised by a dataclass's own checks (__post_init__)
            raise RecipeError(f"{where}: {e}") from e
        for instance in parsed:  # the stage's model card names the recipe it came from
            if hasattr(instance, "recipe_file") and where != "command line":
                instance.recipe_file = where
        return parsed

    def parse(self, args: list[str] | None = None) -> tuple:
        try:
            return self.parse_or_raise(args)
        except RecipeError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
