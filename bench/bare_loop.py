"""The second pretraining baseline of bench/compare_trl.py: a bare PyTorch training loop in nanoGPT's style, with no
Trainer, reading the same recipe file as scripts/pretrain.py.

Same model (the recipe's model_config, vocabulary from its tokenizer), same tokens (the recipe's data tokenized and
cut into full blocks as scripts/pretrain.py does, in a seeded random order), AdamW with the recipe's learning rate,
betas, epsilon and weight decay (none on biases and norms, as Trainer), the recipe's schedule (warmup, then stable,
then decay), gradient clipping at max_grad_norm, the recipe's batch size and steps. It prints the dict Trainer
prints at the end of training (train_runtime, train_samples_per_second), so the benchmark reads both alike.
"""

import math
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def learning_rate(step: int, recipe: dict) -> float:
    """The recipe's warmup_stable_decay (or cosine) schedule as a factor of the peak rate, as Transformers'."""
    warmup, total = recipe.get("warmup_steps", 0), recipe["max_steps"]
    if step < warmup:
        return step / max(warmup, 1)
    if recipe.get("lr_scheduler_type") == "warmup_stable_decay":
        decay = recipe.get("lr_scheduler_kwargs", {}).get("num_decay_steps", 0)
        if step < total - decay:
            return 1.0
        progress = (step - (total - decay)) / max(decay, 1)
        return max(0.0, 1.0 - math.sqrt(progress))  # Transformers' default decay_type: 1 - sqrt
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def main(config_path: str):
    from datasets import load_dataset
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from llm_recipes.data import tokenize_and_pack

    recipe = yaml.safe_load(open(config_path))
    torch.manual_seed(recipe.get("seed", 42))
    tokenizer = AutoTokenizer.from_pretrained(recipe["tokenizer_name_or_path"])
    architecture = dict(recipe["model_config"])
    config = AutoConfig.for_model(architecture.pop("model_type"), vocab_size=len(tokenizer),
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                  bos_token_id=tokenizer.bos_token_id, **architecture)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").train()

    source = recipe["dataset_mixture"]["datasets"][0]["path"]
    raw = load_dataset("json", data_files=source if Path(source).is_file() else f"{source}/*.jsonl.gz", split="train")
    block = recipe["max_seq_length"]
    data = torch.tensor(tokenize_and_pack(raw.select_columns(["text"]), tokenizer, block)["input_ids"])

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.get("weight_decay", 0.0)},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=recipe["learning_rate"],
                                  betas=(recipe.get("adam_beta1", 0.9), recipe.get("adam_beta2", 0.999)),
                                  eps=recipe.get("adam_epsilon", 1e-8))
    batch, steps = recipe["per_device_train_batch_size"], recipe["max_steps"]
    generator = torch.Generator().manual_seed(recipe.get("seed", 42))
    order = torch.randperm(len(data), generator=generator)
    started, position = time.time(), 0
    for step in range(steps):
        if position + batch > len(order):  # a new epoch, a new order
            order, position = torch.randperm(len(data), generator=generator), 0
        inputs = data[order[position:position + batch]]
        position += batch
        for group in optimizer.param_groups:
            group["lr"] = recipe["learning_rate"] * learning_rate(step, recipe)
        loss = model(input_ids=inputs, labels=inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.get("max_grad_norm", 1.0))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % recipe.get("logging_steps", 50) == 0:
            print({"loss": f"{loss.item():.4f}", "step": step + 1}, flush=True)
    runtime = time.time() - started
    print({"train_runtime": f"{runtime:.4f}", "train_samples_per_second": f"{steps * batch / runtime:.3f}",
           "train_steps_per_second": f"{steps / runtime:.3f}"}, flush=True)


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--config") + 1])
