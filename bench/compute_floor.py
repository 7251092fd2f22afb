"""How close the tiny chain's training comes to what the CPU can do, and so how long its recipes must take.

    python bench/compute_floor.py                    # after the tiny chain (reads runs/tiny)
    python bench/compute_floor.py --repeats 5 --runs runs/tiny

Three tables:
1. The cores' matrix-multiply throughput (a 1024 x 1024 x 1024 product), in float32 and bfloat16: the most a
   training step can reach.
2. One pretraining step of the tiny model as recipes/tiny/pretrain.yaml runs it (32 x 128 tokens, AdamW):
   s/step, tokens/s and model FLOP/s, counted as 6N per token for the N weights plus 12·L·d·S for attention
   (the count of the PaLM paper's MFU), as a share of the float32 matmul rate; in float32 and under bfloat16
   autocast.
3. Each training stage of a finished chain: its tokens (tokens/s times training time, from the stage's own
   summary), the FLOPs they cost at its model's size (the reference model's forward passes in DPO and
   distillation not counted), and the FLOP/s the stage reached over its training time. The chain ran at
   another time, maybe in a faster or slower spell of the machine, so its stages are compared with each other
   (the best stage's rate gives the floor), not with tables 1 and 2. The RL stages are left out: their time is
   mostly token-by-token generation.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = dict(model_type="llama", hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, vocab_size=1334,
                  tie_word_embeddings=True)


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(dtype: torch.dtype, repeats: int, size: int = 1024) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    calls = 10
    seconds = median_seconds(lambda: [a @ b for _ in range(calls)], repeats)
    return 2 * size**3 * calls / seconds / 1e9


def flops_per_token(config, sequence_length: int) -> tuple[int, float]:
    """(N, 6N + 12·L·d·S): the weights a token meets (the embedding lookup is free, the LM head is a matmul) and
    the training FLOPs per token."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    # A mixture of experts: each token meets num_experts_per_tok of the num_experts experts.
    expert_share = getattr(config, "num_experts_per_tok", 1) / getattr(config, "num_experts", 1)
    n = sum(p.numel() * (expert_share if ".experts." in name else 1)
            for name, p in model.named_parameters() if "embed_tokens" not in name)
    if config.tie_word_embeddings:
        n += config.vocab_size * config.hidden_size      # the tied LM head is a matmul per token
    attention = 12 * config.num_hidden_layers * config.hidden_size * sequence_length
    return n, 6 * n + attention


def step_seconds(config, batch: int, length: int, autocast: torch.dtype | None, repeats: int) -> float:
    """Median seconds of one training step (forward, backward, AdamW) on random tokens."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, config.vocab_size, (batch, length))

    def step():
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return median_seconds(step, repeats)


def pretrain_step_table(repeats: int, peak: float) -> list[dict]:
    config = AutoConfig.for_model(**TINY_MODEL)
    batch, length = 32, 128
    _, per_token = flops_per_token(config, length)
    rows = []
    for name, autocast in (("float32", None), ("bfloat16 autocast", torch.bfloat16)):
        seconds = step_seconds(config, batch, length, autocast, repeats)
        tokens_per_second = batch * length / seconds
        rows.append({"step": name, "s/step": seconds, "tokens/s": tokens_per_second,
                     "GFLOP/s": tokens_per_second * per_token / 1e9,
                     "share of fp32 matmul": tokens_per_second * per_token / 1e9 / peak})
    return rows


def chain_table(runs: Path) -> list[dict]:
    rows = []
    for summary in sorted(runs.glob("*/stage_complete.json")):
        stage = summary.parent
        done = json.loads(summary.read_text())
        state_file = stage / "trainer_state.json"
        if "train_tokens_per_second" not in done or "generation_seconds" in done or not state_file.exists():
            continue
        history = json.loads(state_file.read_text())["log_history"]
        runtime = next((e["train_runtime"] for e in history if "train_runtime" in e), None)
        if runtime is None:
            continue
        arguments_file = stage / "training_args.json"
        arguments = json.loads(arguments_file.read_text()) if arguments_file.exists() else {}
        length = arguments.get("max_seq_length") or arguments.get("max_length") or 128
        n, per_token = flops_per_token(AutoConfig.from_pretrained(stage), length)
        tokens = done["train_tokens_per_second"] * runtime
        rows.append({"stage": stage.name, "weights N": n, "tokens": tokens, "TFLOP": tokens * per_token / 1e12,
                     "training s": runtime, "GFLOP/s": tokens * per_token / 1e9 / runtime})
    best = max(row["GFLOP/s"] for row in rows) if rows else 0
    for row in rows:
        row["at the best stage's rate, s"] = row["TFLOP"] * 1e3 / best
    return rows


def print_table(rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(keys))) + "|")
    for row in rows:
        cells = [f"{v:,.0f}" if isinstance(v, (int, float)) and abs(v) >= 100 else
                 f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "tiny", help="a finished chain's runs folder")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")

    peaks = {dtype: matmul_gflops(dtype, args.repeats) for dtype in (torch.float32, torch.bfloat16)}
    print_table([{"matmul 1024^3": str(dtype).removeprefix("torch."), "GFLOP/s": gflops}
                 for dtype, gflops in peaks.items()])
    peak = peaks[torch.float32]
    print_table(pretrain_step_table(args.repeats, peak))

    rows = chain_table(args.runs)
    if not rows:
        print(f"no finished training stage under {args.runs}: run the tiny chain first for the chain's table")
        return
    print_table(rows)
    flops, took = sum(r["TFLOP"] for r in rows), sum(r["training s"] for r in rows)
    floor = sum(r["at the best stage's rate, s"] for r in rows)
    print(f"these {len(rows)} stages: {flops:,.1f} TFLOP in {took:,.0f} s of training; at the best stage's rate "
          f"{floor:,.0f} s; at this machine's float32 matmul rate now ({peak:,.0f} GFLOP/s) "
          f"{flops * 1e3 / peak:,.0f} s")


if __name__ == "__main__":
    main()
