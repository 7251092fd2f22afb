"""Mixture-of-experts models through the same stages: what the router does, measured while training.

A sparse model (Transformers' qwen3_moe, mixtral, olmoe, ...) sends each token to `num_experts_per_tok` of its
experts. Two things decide whether that works, and both are logged here:
- the router's load-balancing loss (Switch Transformer, Fedus et al. 2021), which Transformers adds to the
  language-model loss (times `router_aux_loss_coef`) when the config says `output_router_logits: true`; logged as
  `moe_aux_loss`, and
- the share of routed tokens that each expert of each layer received (`expert_shares`: one list per layer, in
  the stage summary). An expert whose share is ~0 is dead: its parameters cost memory and buy nothing.

The shares are counted from the router logits the model returns (top-k of their softmax, as the model routes), so
the same code reads every architecture that returns `router_logits`.
"""

import torch
from transformers import TrainerCallback


def is_moe(config) -> bool:
    """Whether a model config is a mixture of experts (Qwen3-MoE and OLMoE say num_experts, Mixtral
    num_local_experts)."""
    config = config.get_text_config()
    return bool(getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None))


def experts_per_token(config) -> int:
    return config.get_text_config().num_experts_per_tok


class RouterStatsCallback(TrainerCallback):
    """Counts each expert's routed tokens per layer during training, and logs the mean load-balancing loss at every
    logging step (appended to the entry Trainer just logged)."""

    def __init__(self, model):
        self.top_k = experts_per_token(model.config)
        self.counts: torch.Tensor | None = None  # (layers, experts), over the whole run
        self.aux_losses: list[float] = []  # since the last log
        model.register_forward_hook(self._record)

    @torch.no_grad()
    def _record(self, module, inputs, output):
        if not module.training or getattr(output, "router_logits", None) is None:
            return  # evaluation and generation are not routing decisions the model trains on
        counts = []
        for logits in output.router_logits:
            chosen = torch.topk(logits.float().softmax(dim=-1), self.top_k, dim=-1).indices
            counts.append(torch.bincount(chosen.flatten(), minlength=logits.shape[-1]).cpu())
        counts = torch.stack(counts)
        self.counts = counts if self.counts is None else self.counts + counts
        if getattr(output, "aux_loss", None) is not None:
            self.aux_losses.append(float(output.aux_loss))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.aux_losses and state.log_history and "loss" in state.log_history[-1]:
            state.log_history[-1]["moe_aux_loss"] = sum(self.aux_losses) / len(self.aux_losses)
            self.aux_losses = []

    def summary(self) -> dict:
        """Each layer's share of routed tokens per expert, and the extremes over all layers and experts."""
        if self.counts is None:
            return {}
        shares = self.counts / self.counts.sum(dim=1, keepdim=True)
        return {"expert_shares": [[round(float(s), 4) for s in layer] for layer in shares],
                "min_expert_share": float(shares.min()), "max_expert_share": float(shares.max()),
                "experts": shares.shape[1], "experts_per_token": self.top_k}


def add_router_stats(trainer) -> RouterStatsCallback | None:
    """Watch the router of a mixture-of-experts model (None for a dense one)."""
    if not is_moe(trainer.model.config):
        return None
    callback = RouterStatsCallback(trainer.model)
    trainer.add_callback(callback)
    return callback
