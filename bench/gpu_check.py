"""The GPU check: what the GPU recipes do, run for a few minutes on one CUDA GPU (H100/H200), in one table.

    bash bench/gpu_check.sh                 # on the GPU machine, after `pip install -e ".[all]"`; <= 10 minutes
    bash bench/gpu_check.sh --cpu           # every check that can run without CUDA, shrunk to seconds, on a CPU
    bash bench/gpu_check.sh --checks pretrain sft --allow_missing

Checks, each launched as a user launches the stage, on a recipe derived from the GPU recipe named:
- pretrain     recipes/smollm2-135m/pretrain.yaml, a few hundred steps: tokens/s and MFU (model FLOPs utilisation);
- sft          recipes/qwen3-0.6b/sft.yaml, 50 steps, full fine-tuning: tokens/s and peak GPU memory;
- sft_qlora    recipes/qwen3-0.6b/sft_qlora.yaml, 50 steps, NF4 base + LoRA (bitsandbytes): the same;
- grpo_vllm    recipes/qwen3-0.6b/grpo.yaml, 10 steps with vLLM colocated: seconds/step, generation's share, tokens/s;
- fsdp2        the SFT recipe under accelerate_configs/fsdp2.yaml on 1 GPU, 10 steps: a smoke test of the sharding path;
- export_nf4   recipes/qwen3-0.6b/export.yaml: the SFT model in NF4, then `vllm serve` answers one request.

The GPU machine reaches no Hub: the models are the recipes' architectures built from their configs (Qwen3-0.6B's
shape from `QWEN3_0_6B` below, initialised by one pretraining step) with the tiny chain's tokenizer (a 2,048-token
vocabulary instead of 151,936: the body of the network is the real one, its embedding smaller), and the data are the
tiny world's (`scripts/make_tiny_data.py`, CPU seconds). Nothing is pushed.

Before anything runs, every package the selected checks need is looked for; a missing one stops the check with its
name and the pip command, unless `--allow_missing`, which skips those checks and says why in the table. `--cpu`
runs the checks that need no CUDA (not grpo_vllm, fsdp2 or sft_qlora; export_nf4 with torchao's int8 weights in
place of NF4, and no `vllm serve`) with tiny shapes and 2 steps: the test suite runs it, so every path but the
CUDA-only ones is exercised before a GPU is lent.
"""

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CHECKS = ("pretrain", "sft", "sft_qlora", "grpo_vllm", "fsdp2", "export_nf4")
# Peak dense bf16 tensor-core FLOP/s by device name (the vendors' datasheets; SXM parts).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "B200": 2250e12}
# Qwen3-0.6B's architecture (its config.json on the Hub), the model of the SFT, GRPO and export checks.
QWEN3_0_6B = {"model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
              "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
              "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": True}
# The shapes --cpu shrinks every model to: out_features divisible by 32, which bitsandbytes' CPU NF4 kernels need.
CPU_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16}
# Packages each check imports beyond the base install (torch, transformers, trl, datasets, accelerate, peft).
BASE_PACKAGES = ("torch", "transformers", "trl", "datasets", "accelerate", "peft", "tokenizers")
NEEDS = {"pretrain": ("flash_attn", "liger_kernel"), "sft": ("flash_attn", "liger_kernel"),
         "sft_qlora": ("flash_attn", "bitsandbytes"), "grpo_vllm": ("vllm", "liger_kernel"),
         "fsdp2": ("flash_attn",), "export_nf4": ("bitsandbytes", "lm_eval", "vllm")}
NEEDS_ON_CPU = {"export_nf4": ("lm_eval", "torchao")}
CUDA_ONLY = {"fsdp2": "FSDP on a CPU silently falls back to DDP", "grpo_vllm": "vLLM needs CUDA",
             "sft_qlora": "bitsandbytes' 4-bit training needs CUDA; the stage refuses it on a CPU"}


class Check:
    """One row of the table: a name, what it measured, and whether it ran."""

    def __init__(self, name: str):
        self.name, self.status, self.values, self.seconds = name, "not run", {}, None


def missing_packages(names) -> list[str]:
    return [name for name in names if importlib.util.find_spec(name) is None]


def recipe(path: str, **changes) -> dict:
    """A GPU recipe with the check's changes, and nothing that reaches the Hub or writes a tracker."""
    values = yaml.safe_load((REPO / path).read_text())
    for key in ("global_batch_size", "hub_model_id", "eval_steps", "save_steps", "save_total_limit",
                "lm_eval_tasks", "dataset_num_proc", "dataloader_num_workers", "hub_revision", "hub_private_repo"):
        values.pop(key, None)
    values.update(report_to="none", push_to_hub=False, save_strategy="no", eval_strategy="no", eval_on_start=False,
                  logging_steps=1, disable_tqdm=True)
    values.update(changes)
    return {k: v for k, v in values.items() if v is not None}


class GPUCheck:
    def __init__(self, args):
        self.args, self.cpu = args, args.cpu
        self.work = Path(args.work_dir)
        self.world = Path(args.world) if args.world else self.work / "world"
        self.tokenizer = Path(args.tokenizer) if args.tokenizer else self.work / "tokenizer"
        self.launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                       str(REPO / "accelerate_configs" / ("cpu.yaml" if self.cpu else "single_gpu.yaml"))]

    # What differs between a GPU and a CPU run of the same check.

    def machine(self) -> dict:
        if self.cpu:
            return {"use_cpu": True, "bf16": False, "dtype": "float32", "attn_implementation": "sdpa",
                    "use_liger_kernel": False, "gradient_checkpointing": None, "activation_checkpointing": False,
                    "torch_compile": False}  # None: the key is dropped
        return {"bf16": True, "dtype": "bfloat16"}

    def steps(self, on_gpu: int) -> int:
        return 2 if self.cpu else on_gpu

    def shape(self, config: dict) -> dict:
        return {**config, **CPU_SHAPE} if self.cpu else config

    # Running a stage.

    def run_stage(self, name: str, script: str, values: dict, launcher: list[str] | None = None,
                  cwd: Path = REPO) -> dict:
        """Write the derived recipe, launch the stage, and return its stage_complete.json summary."""
        config = self.work / f"{name}.yaml"
        config.write_text(yaml.safe_dump(values, sort_keys=False))
        shutil.rmtree(values["output_dir"], ignore_errors=True)
        command = [*(launcher or self.launch), str(REPO / "scripts" / script), "--config", str(config)]
        self.execute(name, command, cwd=cwd)
        return json.loads((Path(values["output_dir"]) / "stage_complete.json").read_text())

    def execute(self, name: str, command: list[str], timeout: float | None = None, cwd: Path = REPO) -> None:
        log = self.work / f"{name}.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        with log.open("w") as out:
            process = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                     timeout=timeout)
        if process.returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
            raise RuntimeError(f"{name} failed ({process.returncode}); last lines of {log}:\n{tail}")

    # The data and the base model every check shares.

    def prepare(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        if not (self.world / "manifest.json").is_file():
            self.execute("world", [sys.executable, str(REPO / "scripts/make_tiny_data.py"), "--config",
                                   str(REPO / "recipes/tiny/data.yaml"), "--output_dir", str(self.world)])
        if not (self.tokenizer / "tokenizer.json").is_file():
            values = yaml.safe_load((REPO / "recipes/tiny/tokenizer.yaml").read_text())
            values.update(output_dir=str(self.tokenizer), dataset_mixture=self.web_text())
            (self.work / "tokenizer.yaml").write_text(yaml.safe_dump(values))
            self.execute("tokenizer", [sys.executable, str(REPO / "scripts/train_tokenizer.py"), "--config",
                                       str(self.work / "tokenizer.yaml")])

    def web_text(self) -> dict:
        return {"datasets": [{"path": str(self.world / "raw/web.jsonl"), "columns": ["text"]}], "seed": 0}

    def chats(self) -> dict:
        return {"datasets": [{"path": str(self.world / "sft/train.jsonl")}], "seed": 0}

    def base_model(self) -> Path:
        """Qwen3-0.6B's architecture, initialised and saved by one pretraining step (no Hub on the machine)."""
        out = self.work / "qwen3-0.6b-init"
        if not (out / "stage_complete.json").is_file():
            self.run_stage("qwen3_init", "pretrain.py", recipe(
                "recipes/smollm2-135m/pretrain.yaml", output_dir=str(out), tokenizer_name_or_path=str(self.tokenizer),
                model_config=self.shape(QWEN3_0_6B), dataset_mixture=self.web_text(), max_steps=1,
                per_device_train_batch_size=2, max_seq_length=128, warmup_steps=0, **self.machine()))
        return out

    # The checks.

    def pretrain(self) -> dict:
        base = yaml.safe_load((REPO / "recipes/smollm2-135m/pretrain.yaml").read_text())
        seq = 64 if self.cpu else base["max_seq_length"]
        values = recipe("recipes/smollm2-135m/pretrain.yaml", output_dir=str(self.work / "pretrain"),
                        tokenizer_name_or_path=str(self.tokenizer), model_config=self.shape(base["model_config"]),
                        dataset_mixture=self.web_text(), max_steps=self.steps(300), max_seq_length=seq,
                        warmup_steps=self.steps(30), per_device_train_batch_size=2 if self.cpu else 32,
                        lr_scheduler_kwargs=None, lr_scheduler_type="cosine", **self.machine())
        summary = self.run_stage("pretrain", "pretrain.py", values)
        return {"tokens/s": summary["train_tokens_per_second"], "MFU": self.mfu(summary, seq),
                **self.memory(summary)}

    def sft(self, qlora: bool = False) -> dict:
        name = "sft_qlora" if qlora else "sft"
        values = recipe(f"recipes/qwen3-0.6b/{name}.yaml", output_dir=str(self.work / name),
                        model_name_or_path=str(self.base_model()), dataset_mixture=self.chats(),
                        max_steps=self.steps(50), warmup_steps=self.steps(5), max_length=256 if self.cpu else 2048,
                        num_train_epochs=None, per_device_eval_batch_size=None, **self.machine())
        summary = self.run_stage(name, "sft.py", values)
        return {"tokens/s": summary.get("train_tokens_per_second"), **self.memory(summary)}

    def fsdp2(self) -> dict:
        values = recipe("recipes/qwen3-0.6b/sft.yaml", output_dir=str(self.work / "fsdp2"),
                        model_name_or_path=str(self.base_model()), dataset_mixture=self.chats(),
                        max_steps=10, warmup_steps=1, max_length=2048, num_train_epochs=None,
                        per_device_eval_batch_size=None, **self.machine())
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                    str(REPO / "accelerate_configs/fsdp2.yaml"), "--num_processes", "1"]
        summary = self.run_stage("fsdp2", "sft.py", values, launcher)
        return {"tokens/s": summary.get("train_tokens_per_second"), **self.memory(summary)}

    def grpo_vllm(self) -> dict:
        values = recipe("recipes/qwen3-0.6b/grpo.yaml", output_dir=str(self.work / "grpo"),
                        model_name_or_path=str(self.base_model()), chat_template_path=str(
                            REPO / "recipes/templates/chatml.jinja"),
                        dataset_mixture={"datasets": [{"path": str(self.world / "rl/train.jsonl"),
                                                       "columns": ["prompt", "answer"]}], "seed": 0},
                        reward_funcs=["answer_accuracy"], reward_weights=None, max_steps=self.steps(10),
                        warmup_steps=None, num_train_epochs=None, log_completions=False,
                        max_completion_length=32 if self.cpu else 256, num_generations=4 if self.cpu else 16,
                        per_device_train_batch_size=8 if self.cpu else 64, per_device_eval_batch_size=None,
                        use_vllm=not self.cpu, **self.machine())
        summary = self.run_stage("grpo_vllm", "grpo.py", values)
        return {"s/step": summary.get("seconds_per_step"), "generation share": summary.get("generation_share"),
                "generation tokens/s": summary.get("generation_tokens_per_second"), **self.memory(summary)}

    def export_nf4(self) -> dict:
        source = self.work / "sft"
        if not (source / "stage_complete.json").is_file():
            raise RuntimeError("export_nf4 exports the sft check's model: select sft too")
        out = self.work / "export"
        values = recipe("recipes/qwen3-0.6b/export.yaml", output_dir=str(out), model_name_or_path=str(source),
                        adapter_name_or_path=None, dtype="float32" if self.cpu else "bfloat16",
                        # NF4 is bitsandbytes' (CUDA): on a CPU the same path runs with torchao's int8 weights.
                        quantization="int8_weight_only" if self.cpu else "bnb_4bit",
                        eval_task="tiny_arithmetic", eval_metric="exact_match,strict",
                        include_path=str(REPO / "tasks/tiny"), eval_limit=20, max_score_drop=1.0,
                        speed_new_tokens=16 if self.cpu else 128)
        for key in ("use_cpu", "bf16", "logging_steps", "disable_tqdm", "save_strategy", "eval_strategy",
                    "eval_on_start", "report_to"):
            values.pop(key, None)
        # The tiny lm-eval tasks read runs/tiny/data/eval/ from the working directory: lay one out over the world.
        root = self.work / "eval_root"
        (root / "runs/tiny").mkdir(parents=True, exist_ok=True)
        if not (root / "runs/tiny/data").exists():
            (root / "runs/tiny/data").symlink_to(self.world.resolve())
        summary = self.run_stage("export_nf4", "export.py", values, [sys.executable], cwd=root)
        row = {"size MiB": summary["size_bytes"] / 2**20, "greedy tokens/s": summary["tokens_per_second"]}
        if not self.cpu:
            row["vllm serve"] = self.vllm_answer(out)
        return row

    def vllm_answer(self, folder: Path) -> str:
        """Serve the NF4 export with vLLM and ask it one question; returns the start of the answer."""
        log = (self.work / "vllm_serve.log").open("w")
        server = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
                                   "--quantization", "bitsandbytes", "--port", "8011", "--max-model-len", "2048",
                                   "--gpu-memory-utilization", "0.3"], stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            request = json.dumps({"model": str(folder), "prompt": "What is 47 + 35?", "max_tokens": 16}).encode()
            deadline = time.time() + 240
            while time.time() < deadline:
                if server.poll() is not None:
                    raise RuntimeError(f"vllm serve exited ({server.returncode}); see {log.name}")
                try:
                    reply = urllib.request.urlopen(urllib.request.Request(
                        "http://127.0.0.1:8011/v1/completions", request, {"Content-Type": "application/json"}),
                        timeout=30)
                    return repr(json.loads(reply.read())["choices"][0]["text"][:24])
                except OSError:
                    time.sleep(3)
            raise RuntimeError("vllm serve did not answer within 240 s")
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)

    # Measurements.

    def mfu(self, summary: dict, seq: int) -> float | None:
        """Model FLOPs utilisation: 6 N + 12 L H S FLOPs per token (PaLM's appendix B), over the device's peak."""
        if self.cpu:
            return None
        import torch

        name = torch.cuda.get_device_name()
        peak = next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
        if peak is None:
            return None
        config = json.loads((self.work / "pretrain" / "config.json").read_text())
        layers, hidden = config["num_hidden_layers"], config["hidden_size"]
        flops_per_token = 6 * summary["parameters"] + 12 * layers * hidden * seq
        return summary["train_tokens_per_second"] * flops_per_token / peak

    def memory(self, summary: dict) -> dict:
        key = "peak_rss_gib" if self.cpu else "peak_gpu_memory_gib"
        return {("peak RSS GiB" if self.cpu else "peak GPU GiB"): summary.get(key)}


PERCENT = ("MFU", "generation share")  # the measurements that are shares, printed as percentages


def cell(value, key: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.1%}" if key in PERCENT else f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    return str(value)


def table(rows: list[Check]) -> str:
    lines = ["| check | status | seconds | measured |", "|---|---|---:|---|"]
    for row in rows:
        measured = ", ".join(f"{k} {cell(v, k)}" for k, v in row.values.items())
        lines.append(f"| {row.name} | {row.status} | {cell(row.seconds, 'seconds')} | {measured} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", nargs="+", choices=CHECKS, default=list(CHECKS))
    parser.add_argument("--cpu", action="store_true", help="the checks that need no CUDA, tiny and short, on a CPU")
    parser.add_argument("--allow_missing", action="store_true", help="skip a check whose packages are missing")
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "gpu_check"))
    parser.add_argument("--world", help="a tiny world already made (scripts/make_tiny_data.py's output)")
    parser.add_argument("--tokenizer", help="a tokenizer already trained on it")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here too")
    args = parser.parse_args(argv)

    if not args.cpu:
        import torch

        if not torch.cuda.is_available():
            print("error: no CUDA device is visible (torch.cuda.is_available() is False). Run it on a GPU machine, "
                  "or with --cpu for the checks that need none.", file=sys.stderr)
            return 2
    rows, problems = [], []
    for name in args.checks:
        row = Check(name)
        rows.append(row)
        if args.cpu and name in CUDA_ONLY:
            row.status = f"skipped on CPU ({CUDA_ONLY[name]})"
            continue
        needed = BASE_PACKAGES + (NEEDS_ON_CPU.get(name, ()) if args.cpu else NEEDS[name])
        missing = missing_packages(needed)
        if missing:
            row.status = f"skipped: missing {', '.join(missing)}"
            problems.append(f"{name} needs {', '.join(missing)}: pip install {' '.join(missing)}")
    if problems and not args.allow_missing:
        print("error: packages are missing, nothing was run:\n  " + "\n  ".join(problems)
              + "\n(--allow_missing runs the other checks.)", file=sys.stderr)
        return 2

    check = GPUCheck(args)
    check.prepare()
    for row in rows:
        if row.status != "not run":
            continue
        started = time.time()
        try:
            row.values = check.sft(qlora=True) if row.name == "sft_qlora" else getattr(check, row.name)()
            row.status = "ok"
        except (RuntimeError, subprocess.TimeoutExpired, OSError, KeyError) as e:
            row.status = "failed: " + str(e).splitlines()[0]
            print(e, file=sys.stderr)
        row.seconds = time.time() - started
        print(table([row]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps([vars(r) for r in rows], indent=2))
    return 0 if all(r.status == "ok" or r.status.startswith("skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
