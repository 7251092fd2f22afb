"""How the preference stages measure themselves on held-out pairs, at every evaluation (before training too, with
`eval_on_start`), beside what TRL's trainers log:

- the reward model: how often it scores the chosen reply above the rejected one in each named held-out set
  (`eval_<name>_pair_accuracy`), since RewardTrainer reports all held-out pairs under one name;
- the DPO policy: how often it gives the chosen reply a higher log-probability than the rejected one
  (`eval_preference_accuracy`) and the mean difference (`eval_logp_margin`), which compare it with its parent on
  the same footing (TRL's implicit rewards are 0 for the parent by construction).
"""

import json

import torch
from transformers import TrainerCallback


def rendered_pair_side(tokenizer, row: dict, side: str) -> str:
    """A pair's prompt and reply as RewardTrainer renders it: through the chat template (with the row's tools) for
    conversations, concatenated for plain text."""
    if isinstance(row[side], str):
        return row.get("prompt", "") + row[side]
    tools = json.loads(row["tools"]) if isinstance(row.get("tools"), str) else row.get("tools")
    return tokenizer.apply_chat_template(row.get("prompt", []) + row[side], tools=tools, tokenize=False)


class PairAccuracyCallback(TrainerCallback):
    """`eval_<name>_pair_accuracy` of a reward model for each named held-out set."""

    def __init__(self, trainer, named: dict, max_length: int | None, batch_size: int):
        self.trainer, self.batch_size = trainer, batch_size
        tokenizer = trainer.processing_class
        self.sets = {}
        for name, pairs in named.items():
            texts = {side: [rendered_pair_side(tokenizer, row, side) for row in pairs]
                     for side in ("chosen", "rejected")}
            self.sets[name] = {side: tokenizer(batch, truncation=max_length is not None, max_length=max_length,
                                               add_special_tokens=False)["input_ids"] for side, batch in texts.items()}

    @torch.no_grad()
    def scores(self, model, sequences: list[list[int]]) -> torch.Tensor:
        pad = self.trainer.processing_class.pad_token_id
        out = []
        for start in range(0, len(sequences), self.batch_size):
            chunk = sequences[start:start + self.batch_size]
            width = max(map(len, chunk))
            ids = torch.tensor([seq + [pad] * (width - len(seq)) for seq in chunk], device=model.device)
            mask = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq in chunk], device=model.device)
            out.append(model(input_ids=ids, attention_mask=mask).logits[:, 0].float())
        return torch.cat(out)

    def on_evaluate(self, args, state, control, **kwargs):
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        was_training = model.training
        model.eval()
        try:
            accuracy = {f"eval_{name}_pair_accuracy": (self.scores(model, pairs["chosen"])
                                                       > self.scores(model, pairs["rejected"])).float().mean().item()
                        for name, pairs in self.sets.items()}
        finally:
            model.train(was_training)
        self.trainer.log(accuracy)


class PreferenceCallback(TrainerCallback):
    """`eval_preference_accuracy` and `eval_logp_margin` (summed over each reply's tokens) of a DPO policy, and
    with `set_sizes` (the named held-out sets, in the order they were concatenated) each set's
    `eval_<name>_preference_accuracy`."""

    def __init__(self, trainer, set_sizes: dict[str, int] | None = None):
        self.trainer, self.set_sizes = trainer, set_sizes or {}

    @torch.no_grad()
    def on_evaluate(self, args, state, control, **kwargs):
        model = self.trainer.model
        was_training = model.training
        model.eval()
        differences = []
        for batch in self.trainer.get_eval_dataloader():
            # A batch holds the chosen sequences, then the rejected ones; only reply tokens are scored, through
            # the fused LM head DPOTrainer adds to the policy.
            labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
            log_probs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                              use_cache=False, fused_lm_head=True).log_probs.sum(dim=1)
            chosen, rejected = log_probs.chunk(2)
            differences.append(self.trainer.accelerator.gather_for_metrics(chosen - rejected).float())
        model.train(was_training)
        differences = torch.cat(differences)
        metrics = {"eval_preference_accuracy": (differences > 0).float().mean().item(),
                   "eval_logp_margin": differences.mean().item()}
        # The evaluation loader keeps the held-out order, so each named set is a slice of the differences.
        if self.set_sizes:
            for name, part in zip(self.set_sizes, differences.split(list(self.set_sizes.values()))):
                metrics[f"eval_{name}_preference_accuracy"] = (part > 0).float().mean().item()
        self.trainer.log(metrics)
