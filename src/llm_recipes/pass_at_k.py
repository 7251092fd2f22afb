"""Sampled accuracy of a policy on held-out prompts with verifiable answers: pass@1, pass@k and greedy accuracy.

RL on verifiable rewards works where the policy's pass@1 is low but its pass@k is high: the right answer is among its
samples, and RL makes it the likely one. So the RL stages (GRPO, PPO) measure both on their held-out prompts before
training (`eval_on_start`: the SFT parent) and after, with the same sampling settings the policy trains with:

- `eval_pass@1`: the share of right answers over k samples per prompt (the expected accuracy of one sample);
- `eval_pass@<k>`: the share of prompts with at least one right answer among the k;
- `eval_greedy_accuracy`: the share of prompts answered right greedily.

"Right" is `answer_accuracy` against the prompt's `answer` column. Sampling is seeded and runs on a forked RNG, so a
measurement neither depends on nor disturbs the training run's random state.
"""

from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback

from llm_recipes.rewards import answer_accuracy


@dataclass
class PassAtKArguments:
    pass_at_k: int = field(
        default=8, metadata={"help": "Samples per held-out prompt for eval_pass@1 and eval_pass@<k> at every "
                             "evaluation (before training too, with eval_on_start). 0: not measured."})
    pass_at_k_prompts: int | None = field(
        default=200, metadata={"help": "Held-out prompts these are measured on (the first ones); unset: all."})


def generate_replies(model, tokenizer, prompts, do_sample: bool, temperature: float, max_new_tokens: int,
                     batch_size: int) -> list[str]:
    """Replies to `prompts` (chat messages or text), decoded without special tokens, in order."""
    replies = []
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                     if isinstance(p, list) else p for p in chunk]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            output = model.generate(**batch, do_sample=do_sample, temperature=temperature if do_sample else None,
                                    top_p=1.0, top_k=0, max_new_tokens=max_new_tokens,
                                    pad_token_id=tokenizer.pad_token_id)
            replies += tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = padding_side
    return replies


@torch.no_grad()
def pass_at_k(model, tokenizer, prompts: list, answers: list, k: int, temperature: float, max_new_tokens: int,
              batch_size: int = 64, seed: int = 0) -> dict[str, float]:
    """Sums over `prompts` of: prompts, right samples (of k each), prompts with one right sample, right greedy
    replies. Sums, so that processes can add theirs up."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        repeated = [p for p in prompts for _ in range(k)]
        sampled = generate_replies(model, tokenizer, repeated, True, temperature, max_new_tokens, batch_size * k)
    right = answer_accuracy(sampled, [a for a in answers for _ in range(k)])
    greedy = generate_replies(model, tokenizer, prompts, False, 1.0, max_new_tokens, batch_size)
    greedy = answer_accuracy(greedy, answers)
    per_prompt = [right[i * k:(i + 1) * k] for i in range(len(prompts))]
    return {"prompts": float(len(prompts)), "right_samples": float(sum(right)),
            "solved": float(sum(any(r) for r in per_prompt)), "greedy_right": float(sum(greedy))}


class PassAtKCallback(TrainerCallback):
    """At every evaluation, measures pass@1, pass@k and greedy accuracy of the policy on the first `num_prompts`
    held-out prompts, and logs them beside the trainer's own metrics. `policy_of` finds the policy in the trainer's
    unwrapped model (PPO trains the policy and its value model as one module)."""

    def __init__(self, trainer, dataset, k: int, temperature: float, max_new_tokens: int, num_prompts: int | None,
                 policy_of=lambda model: model, seed: int = 0):
        # Rows of another task in the mixture have no answer to check (the safety requests of grpo_safety.yaml).
        rows = dataset.filter(lambda row: row["answer"] is not None)
        rows = rows.select(range(min(num_prompts or len(rows), len(rows))))
        self.trainer, self.k, self.temperature, self.max_new_tokens = trainer, k, temperature, max_new_tokens
        self.prompts, self.answers, self.policy_of, self.seed = rows["prompt"], rows["answer"], policy_of, seed

    def on_evaluate(self, args, state, control, **kwargs):
        accelerator = self.trainer.accelerator
        policy = self.policy_of(accelerator.unwrap_model(self.trainer.model))
        shard = slice(accelerator.process_index, None, accelerator.num_processes)
        was_training = policy.training
        policy.eval()
        try:
            sums = pass_at_k(policy, self.trainer.processing_class, self.prompts[shard], self.answers[shard], self.k,
                             self.temperature, self.max_new_tokens, args.per_device_eval_batch_size,
                             self.seed + accelerator.process_index)
        finally:
            policy.train(was_training)
        totals = accelerator.reduce(torch.tensor(list(sums.values()), device=accelerator.device), reduction="sum")
        prompts, right, solved, greedy = totals.tolist()
        self.trainer.log({"eval_pass@1": right / (prompts * self.k), f"eval_pass@{self.k}": solved / prompts,
                          "eval_greedy_accuracy": greedy / prompts})


def add_pass_at_k_callback(trainer, args: PassAtKArguments, eval_dataset, temperature: float, max_new_tokens: int,
                           seed: int, policy_of=lambda model: model) -> None:
    """Measure pass@k at every evaluation when the recipe asks for it and the held-out prompts have answers."""
    if args.pass_at_k and eval_dataset is not None and "answer" in eval_dataset.column_names:
        trainer.add_callback(PassAtKCallback(trainer, eval_dataset, args.pass_at_k, temperature, max_new_tokens,
                                             args.pass_at_k_prompts, policy_of=policy_of, seed=seed))
