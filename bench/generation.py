"""Generation speed on the CPU: tokens/s of the tiny chain's RL rollouts and of its evaluation, with Transformers'
default dynamic KV cache, a static cache, and a static cache with the forward pass compiled (torch.compile).

    python bench/generation.py                          # after the tiny chain's SFT stage (runs/tiny/sft)
    python bench/generation.py --model runs/tiny/grpo --repeats 5

Two workloads, each as the chain runs it:
- rollout: a GRPO step's replies (recipes/tiny/grpo.yaml: 16 prompts x 8 samples = 128, temperature 1.0, up to
  max_completion_length tokens), in one batch;
- eval: greedy replies to held-out prompts in batches of the eval recipe's batch_size (64), up to 96 tokens.
Tokens are the reply tokens up to and including each reply's end-of-turn token (what a trainer keeps); the time is
the wall time of `generate`. Each variant is run `--repeats` times after one warm-up call (for torch.compile, the
call that compiles; its time is reported on its own), and the table gives the median and the spread (min-max).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def prompts_from(path: Path, count: int) -> list:
    rows = [json.loads(line) for line in path.read_text().splitlines()[:count]]
    return [row["prompt"] for row in rows]


def encode(tokenizer, prompts: list):
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def reply_tokens(output: torch.Tensor, prompt_length: int, stop_ids: set[int]) -> int:
    """Reply tokens up to and including the first stop token of each row (the rest is padding)."""
    total = 0
    for row in output[:, prompt_length:].tolist():
        ends = [i for i, token in enumerate(row) if token in stop_ids]
        total += ends[0] + 1 if ends else len(row)
    return total


def timed_generate(model, batch, kwargs, stop_ids) -> tuple[float, int]:
    started = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(**batch, **kwargs)
    return time.perf_counter() - started, reply_tokens(output, batch["input_ids"].shape[1], stop_ids)


def measure(model, tokenizer, batches, kwargs, repeats: int, stop_ids) -> dict:
    """One warm-up pass over the batches, then `repeats` timed passes: tokens/s of each pass."""
    warm_up = sum(timed_generate(model, b, kwargs, stop_ids)[0] for b in batches)
    rates = []
    for repeat in range(repeats):
        torch.manual_seed(repeat)
        runs = [timed_generate(model, b, kwargs, stop_ids) for b in batches]
        rates.append(sum(t for _, t in runs) / sum(s for s, _ in runs))
    return {"tokens_per_second": statistics.median(rates), "min": min(rates), "max": max(rates),
            "warm_up_seconds": warm_up}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "runs/tiny/sft"))
    parser.add_argument("--data", default=str(REPO / "runs/tiny/data"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["dynamic", "static", "static+compile"])
    parser.add_argument("--out", type=Path, help="write the results as JSON here too")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(args.model).is_dir():
        sys.exit(f"{args.model} is missing: run the tiny chain up to SFT first "
                 "(python scripts/run_pipeline.py --config recipes/tiny/pipeline.yaml).")
    torch.set_num_threads(torch.get_num_threads())
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    grpo = yaml.safe_load((REPO / "recipes/tiny/grpo.yaml").read_text())
    prompts_per_step = grpo["per_device_train_batch_size"] // grpo["num_generations"]
    rl = Path(args.data) / "rl"
    workloads = {
        "rollout": ([encode(tokenizer, [p for p in prompts_from(rl / "train.jsonl", prompts_per_step)
                                        for _ in range(grpo["num_generations"])])],
                    dict(do_sample=True, temperature=grpo["temperature"], top_p=1.0, top_k=0,
                         max_new_tokens=grpo["max_completion_length"])),
        "eval": ([encode(tokenizer, prompts_from(rl / "test.jsonl", 128)[i:i + 64]) for i in (0, 64)],
                 dict(do_sample=False, max_new_tokens=96)),
    }
    stop_ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    results = {}
    for variant in args.variants:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
        extra = {"pad_token_id": tokenizer.pad_token_id}
        if variant.startswith("static"):
            extra["cache_implementation"] = "static"
        if variant.endswith("compile"):
            model.forward = torch.compile(model.forward)
        for name, (batches, kwargs) in workloads.items():
            print(f"{name}: {variant} ...", flush=True)
            results[f"{name} / {variant}"] = measure(model, tokenizer, batches, {**kwargs, **extra}, args.repeats,
                                                     stop_ids)
    print(f"\n| workload | cache | tokens/s (median of {args.repeats}) | min - max | ratio to dynamic | "
          "first call s (warm-up, compiles) |")
    print("|---|---|---:|---:|---:|---:|")
    for key, m in results.items():
        name, variant = key.split(" / ")
        base = results.get(f"{name} / dynamic", {}).get("tokens_per_second")
        print(f"| {name} | {variant} | {m['tokens_per_second']:,.0f} | {m['min']:,.0f} - {m['max']:,.0f} | "
              f"{m['tokens_per_second'] / base:.2f} | {m['warm_up_seconds']:.1f} |" if base else "")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
