"""A mixture of experts against its dense twin, in one run: the same tokens, the same attention, and the same
feed-forward parameters met per token (the dense width is experts_per_token x each expert's width), pretrained by
scripts/pretrain.py. Then the MoE's tokens/s under each of Transformers' expert kernels (eager, batched_mm,
grouped_mm), so the recipe can name the fastest.

    python bench/moe_vs_dense.py                 # after the tiny chain's data and tokenizer exist (runs/tiny/...)
    python bench/moe_vs_dense.py --steps 100 --kernel_steps 20

Prints two tables (markdown): held-out loss, tokens/s, parameters in all and per token, the smallest and largest
expert share; and tokens/s per expert kernel.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MOE_RECIPE = REPO / "recipes/tiny/pretrain_moe.yaml"
MOE_ONLY = ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob", "output_router_logits",
            "router_aux_loss_coef", "experts_implementation", "decoder_sparse_step", "mlp_only_layers")
KERNELS = ("eager", "batched_mm", "grouped_mm")


def dense_twin(moe: dict) -> dict:
    """The dense Qwen3 that meets the same feed-forward parameters per token as the MoE."""
    dense = {k: v for k, v in moe.items() if k not in MOE_ONLY}
    # Qwen3's config defaults head_dim to 128; Qwen3-MoE's attention takes hidden_size / heads when it is unset.
    dense.update(model_type="qwen3", intermediate_size=moe["num_experts_per_tok"] * moe["moe_intermediate_size"],
                 head_dim=moe.get("head_dim", moe["hidden_size"] // moe["num_attention_heads"]))
    return dense


def pretrain(recipe: dict, folder: Path, *argv: str, timeout: float | None = None) -> dict | None:
    """The stage summary of a pretraining run, or None if it ran past `timeout` seconds (and was stopped)."""
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    try:
        subprocess.run([sys.executable, str(REPO / "scripts/pretrain.py"), "--config", str(path), "--output_dir",
                        str(folder / "out"), "--save_strategy", "no", "--disable_tqdm", "true", *argv], check=True,
                       cwd=REPO, stdout=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return json.loads((folder / "out/stage_complete.json").read_text())


def per_token_parameters(summary: dict, model_config: dict) -> int:
    """All parameters less those of the experts a token does not meet."""
    if "num_experts" not in model_config:
        return summary["parameters"]
    hidden, width = model_config["hidden_size"], model_config["moe_intermediate_size"]
    unused = model_config["num_experts"] - model_config["num_experts_per_tok"]
    return summary["parameters"] - model_config["num_hidden_layers"] * unused * 3 * hidden * width


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps of each model (default: recipe's)")
    parser.add_argument("--kernel_steps", type=int, default=40, help="steps of each expert-kernel speed run")
    parser.add_argument("--kernel_timeout", type=float, default=240, help="seconds a kernel's run may take")
    args = parser.parse_args()
    moe = yaml.safe_load(MOE_RECIPE.read_text())
    steps = ["--max_steps", str(args.steps)] if args.steps else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        twins = (("dense (qwen3)", dense_twin(moe["model_config"])), ("MoE (qwen3_moe)", moe["model_config"]))
        for name, config in twins:
            folder = Path(tmp) / name.split()[0]
            folder.mkdir()
            summary = pretrain({**moe, "model_config": config}, folder, *steps)
            rows.append((name, summary, config))
        kernels = []
        for kernel in KERNELS:
            folder = Path(tmp) / kernel
            folder.mkdir()
            config = {**moe["model_config"], "experts_implementation": kernel}
            summary = pretrain({**moe, "model_config": config}, folder, "--max_steps", str(args.kernel_steps),
                               "--eval_strategy", "no", "--eval_on_start", "false", timeout=args.kernel_timeout)
            kernels.append((kernel, summary["train_tokens_per_second"] if summary else None))

    dense_speed = rows[0][1]["train_tokens_per_second"]
    print("| model | parameters | per token | held-out loss (before → after) | tokens/s | vs dense | expert share "
          "min / max |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, summary, config in rows:
        shares = (f"{summary['min_expert_share']:.3f} / {summary['max_expert_share']:.3f}"
                  if "min_expert_share" in summary else "–")
        print(f"| {name} | {summary['parameters']:,} | {per_token_parameters(summary, config):,} | "
              f"{summary['eval_loss_before']:.3f} → {summary['eval_loss']:.3f} | "
              f"{summary['train_tokens_per_second']:,.0f} | {summary['train_tokens_per_second'] / dense_speed:.2f} | "
              f"{shares} |")
    moe_summary = rows[1][1]
    if "expert_shares" in moe_summary:
        print("\nExpert shares per layer (MoE):")
        for i, layer in enumerate(moe_summary["expert_shares"]):
            print(f"- layer {i}: " + ", ".join(f"{s:.3f}" for s in layer))
    fastest = max(speed for _, speed in kernels if speed)
    print("\n| experts_implementation | tokens/s | vs fastest |\n|---|---:|---:|")
    for kernel, speed in kernels:
        print(f"| {kernel} | {speed:,.0f} | {speed / fastest:.2f} |" if speed else
              f"| {kernel} | did not finish {args.kernel_steps} steps in {args.kernel_timeout:.0f} s | – |")


if __name__ == "__main__":
    main()
