"""Our stages next to the same job run by TRL's own CLI (`trl sft`, `trl dpo`, `trl grpo`), in one run, on the tiny
chain's checkpoints and data: training tokens/s, seconds per step, wall time and peak memory, and their ratios.

    python bench/compare_trl.py                       # after the tiny chain (runs/tiny/...) exists
    python bench/compare_trl.py --jobs sft dpo --repeats 2

"The same job": each of our runs uses its tiny recipe (recipes/tiny/<stage>.yaml) with the data reduced to one
source and the steps cut (no evaluation, no checkpoints); TRL's CLI gets the same model, the same file and every
setting of that recipe that its config has (batch size, learning rate, lengths, chat template, sampling order, ...).
What differs is what each side does around the trainer.
Pretraining has no TRL CLI: its baseline is bench/run_clm.py, written the way Transformers' run_clm example
pretrains (tokenize, concatenate, cut into blocks, Trainer). TRL 1.16 has no PPO: ours is put next to TRL's GRPO
with the same number of replies per step and the same reply length, the comparison issue 6 asks for.

Peak memory is the peak resident memory of the training process (sampled every 50 ms). The jobs are the tiny
recipes on the CPU; GPU jobs (a ~0.5B model, device memory, MFU) are not written yet.
"""

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "runs" / "tiny"

# Keys of our recipes that TRL's configs do not have (our stage arguments); everything else is passed on.
OURS_ONLY = {"dataset_mixture", "lm_eval_tasks", "lm_eval_limit", "lm_eval_chat_template", "dry_run", "license",
             "hub_dry_run", "global_batch_size", "tokenizer_name_or_path", "reward_funcs", "model_config",
             "max_seq_length", "packing_strategy", "dataset_num_proc"}
# Settings every run of the benchmark shares: training only, nothing written but the final model.
QUIET = {"eval_strategy": "no", "eval_on_start": False, "save_strategy": "no", "logging_steps": 1,
         "disable_tqdm": True, "report_to": "none", "push_to_hub": False}


class PeakMemory(threading.Thread):
    """Samples the resident memory of the largest process of a process tree (the trainer, not the launchers in
    front of it, which differ between the two sides: `trl` starts one more); `.peak` in bytes."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process, self.peak, self.done = psutil.Process(pid), 0, threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                tree = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, *(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            self.done.wait(0.05)


def as_number(value):
    """A logged value as a float where it is one ("0.6119", "2.455e+05"), else as it is."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def logged_dicts(stdout: str) -> list[dict]:
    """The dicts Trainer prints at each logging step (values as strings in Transformers 5)."""
    found = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                entry = ast.literal_eval(line)
            except (ValueError, SyntaxError):
                continue
            found.append({k: as_number(v) for k, v in entry.items()})
    return found


def run_measured(command: list[str], log: Path, tokens_per_sample: int | None = None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    started = time.time()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    memory = PeakMemory(process.pid)
    memory.start()
    stdout, _ = process.communicate()
    memory.done.set()
    memory.join()
    wall = time.time() - started
    log.write_text(stdout)
    if process.returncode != 0:
        sys.exit(f"failed ({process.returncode}): {' '.join(command)}\n{stdout[-3000:]}\nlog: {log}")
    logs = logged_dicts(stdout)
    final = next(d for d in reversed(logs) if "train_runtime" in d)
    steps = [d for d in logs if "loss" in d or "objective/scores" in d]
    tokens = next((d["num_tokens"] for d in reversed(steps) if "num_tokens" in d), None)
    if tokens is None and tokens_per_sample:  # pretraining: every sample is one full block
        tokens = final["train_samples_per_second"] * final["train_runtime"] * tokens_per_sample
    return {"train_seconds": final["train_runtime"], "steps": len(steps), "tokens": tokens, "wall_seconds": wall,
            "peak_rss_gib": memory.peak / 1024**3, "final_loss": next((d["loss"] for d in reversed(steps)
                                                                         if "loss" in d), None)}


def our_recipe(stage: str, dataset: dict, steps: int, out: Path, extra: dict) -> dict:
    recipe = yaml.safe_load((REPO / "recipes" / "tiny" / f"{stage}.yaml").read_text())
    recipe.update(QUIET, max_steps=steps, output_dir=str(out), **extra)
    recipe["dataset_mixture"] = {"datasets": [dataset], "seed": 0}
    for key in ("save_steps", "save_total_limit", "eval_steps", "lm_eval_tasks"):
        recipe.pop(key, None)
    return recipe


def trl_config(recipe: dict, dataset: dict, out: Path) -> dict:
    """The TRL CLI's config for the same job: the recipe's settings, TRL's dataset list, no keys of ours."""
    config = {k: v for k, v in recipe.items() if k not in OURS_ONLY}
    config.update(output_dir=str(out), datasets=[{"path": "json", "data_files": dataset["path"], "split": "train",
                                                  **({"columns": dataset["columns"]} if "columns" in dataset else {})}])
    return config


def trl_cli(stage: str, config: Path) -> list[str]:
    """TRL's own command line, launched on the same accelerate config as ours."""
    return [str(Path(sys.executable).parent / "trl"), stage, "--config", str(config), "--accelerate_config",
            str(REPO / "accelerate_configs/cpu.yaml")]


def jobs(args) -> dict:
    """Each job: (our command, the baseline's command, what the baseline is)."""
    work = args.work_dir
    data = RUNS / "data"
    defined = {}

    def pair(stage, script, dataset, steps, extra, baseline, trl_extra=None, baseline_recipe=None):
        """`baseline_recipe`: the recipe TRL's config is made from, when it is not ours (PPO's is GRPO's)."""
        ours = our_recipe(script, dataset, steps, work / f"{stage}_ours", extra)
        (work / f"{stage}_ours.yaml").write_text(yaml.safe_dump(ours))
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  str(REPO / "accelerate_configs/cpu.yaml")]
        our_command = [*launch, str(REPO / "scripts" / f"{script}.py"), "--config", str(work / f"{stage}_ours.yaml")]
        if baseline.startswith("trl "):
            config = trl_config(baseline_recipe or ours, dataset, work / f"{stage}_trl")
            config.update(trl_extra or {})
            (work / f"{stage}_trl.yaml").write_text(yaml.safe_dump(config))
            base_command = trl_cli(baseline.split()[1], work / f"{stage}_trl.yaml")
        else:  # our own stage with other settings (`trl_extra`), or a pretraining baseline script of bench/
            config = {**ours, **(trl_extra or {}), "output_dir": str(work / f"{stage}_base")}
            (work / f"{stage}_base.yaml").write_text(yaml.safe_dump(config))
            runner = (REPO / "scripts" / f"{script}.py" if baseline.startswith("ours")
                      else REPO / "bench" / ("bare_loop.py" if "bare" in baseline else "run_clm.py"))
            base_command = [*launch, str(runner), "--config", str(work / f"{stage}_base.yaml")]
        defined[stage] = (our_command, base_command, baseline)

    if "pretrain" in args.jobs:
        pair("pretrain", "pretrain", {"path": str(RUNS / "prepared" / "data")}, args.steps["pretrain"],
             {"tokenizer_name_or_path": str(RUNS / "tokenizer")}, "run_clm-style Trainer (bench/run_clm.py)")
    if "pretrain_bare" in args.jobs:
        pair("pretrain_bare", "pretrain", {"path": str(RUNS / "prepared" / "data")}, args.steps["pretrain"],
             {"tokenizer_name_or_path": str(RUNS / "tokenizer")}, "bare PyTorch loop (bench/bare_loop.py)")
    if "sft_trl_defaults" in args.jobs:
        # TRL's defaults for everything but what the job is: the model, the data and its chat template, the steps,
        # the length, and what this machine needs (no bf16 on this CPU).
        sft = our_recipe("sft", {"path": str(data / "sft" / "train.jsonl")}, args.steps["sft"], work / "unused", {})
        fixed = {key: sft[key] for key in ("model_name_or_path", "chat_template_path", "eos_token", "max_length",
                                           "max_steps", "use_cpu", "bf16", "seed", *QUIET) if key in sft}
        pair("sft_trl_defaults", "sft", {"path": str(data / "sft" / "train.jsonl")}, args.steps["sft"],
             {"model_name_or_path": str(RUNS / "long_context")}, "trl sft (TRL's defaults)", baseline_recipe={
                 **fixed, "model_name_or_path": str(RUNS / "long_context")})
    if "sft" in args.jobs:
        pair("sft", "sft", {"path": str(data / "sft" / "train.jsonl")}, args.steps["sft"],
             {"model_name_or_path": str(RUNS / "long_context")}, "trl sft")
    if "dpo" in args.jobs:
        pair("dpo", "dpo", {"path": str(data / "preferences" / "train.jsonl"), "columns": ["prompt", "chosen",
                                                                                         "rejected"]},
             args.steps["dpo"], {"model_name_or_path": str(RUNS / "sft")}, "trl dpo")
    if "dpo_precomputed" in args.jobs:
        pair("dpo_precomputed", "dpo", {"path": str(data / "preferences" / "train.jsonl"),
                                        "columns": ["prompt", "chosen", "rejected"]},
             args.steps["dpo"], {"model_name_or_path": str(RUNS / "sft"), "precompute_ref_log_probs": True},
             "ours, reference forward at every step", trl_extra={"precompute_ref_log_probs": False})
    rl_data = {"path": str(data / "rl" / "train.jsonl"), "columns": ["prompt", "answer"]}
    grpo_reward = {"reward_funcs": ["llm_recipes.rewards.answer_accuracy"]}
    if "grpo" in args.jobs:
        pair("grpo", "grpo", rl_data, args.steps["grpo"],
             {"model_name_or_path": str(RUNS / "sft"), "reward_funcs": ["answer_accuracy"], "reward_weights": None},
             "trl grpo", grpo_reward)
    if "ppo" in args.jobs:
        # TRL GRPO with PPO's replies per step (64 x 2 minibatches = 128, 16 prompts x 8) and reply length.
        ppo = yaml.safe_load((REPO / "recipes/tiny/ppo.yaml").read_text())
        replies = ppo["per_device_train_batch_size"] * ppo["num_mini_batches"]
        pair("ppo", "ppo", rl_data, args.steps["ppo"],
             {"model_name_or_path": str(RUNS / "sft"), "reward_funcs": ["answer_accuracy"], "reward_weights": None},
             "trl grpo (same replies per step and length; TRL has no PPO)",
             {**grpo_reward, "model_name_or_path": str(RUNS / "sft"), "per_device_train_batch_size": replies,
              "max_completion_length": ppo["max_completion_length"], "reward_weights": None},
             baseline_recipe=our_recipe("grpo", rl_data, args.steps["ppo"], work / "ppo_trl", {}))
    return defined


def held_out_reply_loss(model_dir: Path, conversations: Path, limit: int = 200) -> float:
    """Mean loss per assistant token on held-out conversations, through the chat template of our SFT recipe, so
    that both sides of an SFT job are scored alike whatever they trained on."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = yaml.safe_load((REPO / "recipes/tiny/sft.yaml").read_text())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = (REPO / recipe["chat_template_path"]).read_text()
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total, tokens = 0.0, 0
    for line in conversations.read_text().splitlines()[:limit]:
        encoded = tokenizer.apply_chat_template(json.loads(line)["messages"], chat_template=template,
                                                return_dict=True, return_assistant_tokens_mask=True)
        ids = torch.tensor([encoded["input_ids"]])
        labels = torch.where(torch.tensor([encoded["assistant_masks"]]) == 1, ids, -100)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        total, tokens = total + loss.item(), tokens + int((labels[:, 1:] != -100).sum())
    return total / max(tokens, 1)


def number(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "–"


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "–"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", nargs="+", default=["pretrain", "pretrain_bare", "sft", "sft_trl_defaults", "dpo",
                                                      "dpo_precomputed", "grpo", "ppo"])
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side; the faster is kept")
    parser.add_argument("--work_dir", type=Path, default=REPO / "runs" / "bench")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here too")
    parser.add_argument("--steps", nargs="*", default=[], metavar="RECIPE=STEPS",
                        help="steps per job's recipe, e.g. pretrain=100 (defaults: pretrain 200, sft 100, dpo 40, "
                        "grpo 10, ppo 10)")
    args = parser.parse_args()
    args.steps = {"pretrain": 200, "sft": 100, "dpo": 40, "grpo": 10, "ppo": 10,
                  **{k: int(v) for k, v in (item.split("=") for item in args.steps)}}
    args.block = yaml.safe_load((REPO / "recipes/tiny/pretrain.yaml").read_text())["max_seq_length"]
    for needed in ("tokenizer", "prepared", "long_context", "sft", "data"):
        if not (RUNS / needed).exists():
            sys.exit(f"runs/tiny/{needed} is missing: run the tiny chain first "
                     "(python scripts/run_pipeline.py --config recipes/tiny/pipeline.yaml).")
    shutil.rmtree(args.work_dir, ignore_errors=True)
    args.work_dir.mkdir(parents=True)

    results = {}
    for stage, (ours, baseline, what) in jobs(args).items():
        measured = {}
        # Alternate the two sides, so that a slow moment of the machine does not fall on one side only.
        for repeat in range(args.repeats):
            for side, command in (("ours", ours), ("baseline", baseline)):
                shutil.rmtree(args.work_dir / f"{stage}_{side}", ignore_errors=True)
                print(f"{stage}: {side} ({repeat + 1}/{args.repeats}) ...", flush=True)
                run = run_measured(command, args.work_dir / f"{stage}_{side}_{repeat}.log",
                                   args.block if stage.startswith("pretrain") else None)
                measured.setdefault(f"{side}_runs", []).append(run)
                if side not in measured or run["train_seconds"] < measured[side]["train_seconds"]:
                    measured[side] = run
        measured["baseline_is"] = what
        if stage.startswith("sft"):
            for side in ("ours", "baseline"):
                suffix = "ours" if side == "ours" else "trl" if what.startswith("trl") else "base"
                folder = args.work_dir / f"{stage}_{suffix}"
                measured[side]["held_out_loss"] = held_out_reply_loss(folder, RUNS / "data" / "sft" / "test.jsonl")
        results[stage] = measured

    print("\n| job | baseline | steps | ours tokens/s | baseline tokens/s | **tokens/s ratio** | step-time ratio per "
          "repeat | ours s/step | "
          "baseline s/step | wall s (ours / baseline) | peak RSS GiB (ours / baseline) | final train loss "
          "(ours / baseline) | held-out reply loss (ours / baseline) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for stage, m in results.items():
        ours, base = m["ours"], m["baseline"]
        tokens_ours = ours["tokens"] / ours["train_seconds"] if ours["tokens"] else None
        tokens_base = base["tokens"] / base["train_seconds"] if base["tokens"] else None
        per_step = [r["train_seconds"] / max(r["steps"], 1) for r in (ours, base)]
        # The spread: the ratio of each repeat's pair of runs (the sides alternate, so a pair shares the moment).
        pairs = [b["train_seconds"] / o["train_seconds"] * (o["steps"] / max(b["steps"], 1))
                 for o, b in zip(m["ours_runs"], m["baseline_runs"])]
        spread = f"{min(pairs):.2f}–{max(pairs):.2f}" if len(pairs) > 1 else "–"
        print(f"| {stage} | {m['baseline_is']} | {ours['steps']} | "
              f"{tokens_ours and f'{tokens_ours:,.0f}' or '–'} | {tokens_base and f'{tokens_base:,.0f}' or '–'} | "
              f"**{ratio(tokens_ours, tokens_base)}** | {spread} | {per_step[0]:.3f} | {per_step[1]:.3f} "
              f"(ratio {ratio(per_step[1], per_step[0])}) | {ours['wall_seconds']:.0f} / {base['wall_seconds']:.0f} "
              f"| {ours['peak_rss_gib']:.2f} / {base['peak_rss_gib']:.2f} | {number(ours['final_loss'])} / "
              f"{number(base['final_loss'])} | {number(ours.get('held_out_loss'))} / "
              f"{number(base.get('held_out_loss'))} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
