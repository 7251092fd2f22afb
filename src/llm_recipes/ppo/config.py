"""`PPOConfig`: what a PPO recipe may hold, grouped by subject (rewards, rollouts, PPO), as TRL's configs are."""

from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments

from llm_recipes.rewards import check_reward_names, reward_help


@dataclass
class PPOConfig(TrainingArguments):
    """Arguments of `PPOTrainer`: Transformers' TrainingArguments and PPO's own.

    One PPO step collects `per_device_train_batch_size * gradient_accumulation_steps * num_mini_batches` replies per
    process (the rollout batch), then makes `num_ppo_epochs * num_mini_batches` optimizer steps on them. `max_steps`
    counts PPO steps; so do `logging_steps`, `save_steps`, `eval_steps` and the learning-rate schedule.
    """

    # Rewards
    reward_funcs: list[str] = field(
        default_factory=lambda: ["answer_accuracy"],
        metadata={"help": reward_help()},
    )
    reward_weights: list[float] | None = field(
        default=None,
        metadata={"help": "One weight per entry of reward_funcs, in order; the score is their weighted sum. "
                  "Default: 1.0 each."},
    )
    missing_eos_penalty: float | None = field(
        default=1.0,
        metadata={"help": "Subtracted from the score of a reply that never emits a stop token (it ran into "
                  "max_completion_length). null: no penalty."},
    )
    value_model_path: str | None = field(
        default=None,
        metadata={"help": "Checkpoint the value model starts from. Default: the first reward model of reward_funcs, "
                  "else the policy's checkpoint (with a new one-output head)."},
    )
    value_head: Literal["separate", "shared"] = field(
        default="separate",
        metadata={"help": "separate: a value model of its own (value_model_path, else the first reward model, else a "
                  "copy of the policy), with its own forward and backward passes. shared: one linear head on the "
                  "policy's last hidden states, read from the passes the policy makes anyway (generation, updates), "
                  "its gradient stopped at the head so that value learning leaves the policy's features alone: a PPO "
                  "step costs about a GRPO step's passes."},
    )
    # Rollouts
    max_prompt_length: int = field(
        default=512, metadata={"help": "Prompt tokens kept (the end of a longer prompt is kept, its start cut)."})
    max_completion_length: int = field(default=64, metadata={"help": "Most tokens generated per reply."})
    temperature: float = field(
        default=0.7,
        metadata={"help": "Sampling temperature of the rollouts; log-probabilities are taken at the same temperature "
                  "so that the policy being trained is the one that sampled."},
    )
    top_p: float = field(
        default=1.0,
        metadata={"help": "Nucleus sampling of the rollouts. Below 1.0 the sampling distribution is no longer the "
                  "policy's, which PPO's ratios assume; keep 1.0 unless you know why."},
    )
    local_rollout_forward_batch_size: int = field(
        default=64,
        metadata={"help": "Prompts per generation call and per scoring forward pass (a memory knob; the rollout "
                  "batch is split into chunks of this size)."},
    )
    rollout_logprobs: bool = field(
        default=True,
        metadata={"help": "Take the policy's log-probabilities of its replies from the generation's own logits "
                  "instead of a second forward pass over prompt and reply. Costs a replies x length x vocabulary "
                  "tensor of logits per generation chunk: turn it off for large vocabularies and long replies."},
    )
    # PPO
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes of PPO updates over each rollout batch."})
    num_mini_batches: int = field(
        default=1, metadata={"help": "Minibatches (optimizer steps) per pass over a rollout batch."})
    kl_coef: float = field(
        default=0.05, metadata={"help": "Weight of the per-token KL penalty to the reference (its start value with "
                                "adaptive_kl)."})
    kl_estimator: Literal["k1", "k2", "k3"] = field(
        default="k1",
        metadata={"help": "Per-token KL estimator: k1 = log(p/q) (unbiased, can be negative), k3 = q/p - 1 - "
                  "log(q/p) (unbiased, non-negative, lower variance), k2 = log(p/q)^2 / 2."},
    )
    adaptive_kl: bool = field(
        default=False,
        metadata={"help": "Adapt kl_coef so that the KL per reply approaches kl_target (Ziegler et al., 2019)."})
    kl_target: float = field(default=6.0, metadata={"help": "KL per reply (nats) the adaptive controller aims at."})
    kl_horizon: int = field(
        default=10000, metadata={"help": "Episodes over which the adaptive controller closes most of the gap."})
    cliprange: float = field(default=0.2, metadata={"help": "Clip range of the policy ratio (epsilon)."})
    cliprange_value: float = field(
        default=0.2, metadata={"help": "Clip range of the value update around the rollout's values."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss in the total loss."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor of GAE."})
    lam: float = field(default=0.95, metadata={"help": "Lambda of GAE (bias-variance trade-off of advantages)."})
    whiten_rewards: bool = field(
        default=False, metadata={"help": "Scale the per-token rewards to unit variance over the batch before GAE."})
    whiten_advantages: bool = field(
        default=True, metadata={"help": "Whiten advantages (zero mean, unit variance over the batch's tokens)."})
    # Overrides of TrainingArguments' defaults, as TRL's configs make them.
    learning_rate: float = field(default=3e-6, metadata={"help": "Initial learning rate (AdamW)."})
    logging_steps: float = field(default=10, metadata={"help": "Log every this many PPO steps."})

    def __post_init__(self):
        super().__post_init__()
        check_reward_names(self.reward_funcs, self.reward_weights)
        for key in ("num_ppo_epochs", "num_mini_batches", "max_completion_length", "local_rollout_forward_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be at least 1, got {getattr(self, key)}.")
        if self.value_head == "shared" and self.value_model_path:
            raise ValueError("value_model_path names a value model of its own, and value_head: shared reads values "
                             "off the policy; set one or the other.")
        if not 0 < self.top_p <= 1 or self.temperature <= 0:
            raise ValueError("temperature must be > 0 and top_p in (0, 1].")

    def dry_run_plan(self, training_prompts: int) -> str:
        """What `--dry_run` prints: the rollout batch, optimizer steps per PPO step, devices, prompts, PPO steps."""
        return "\n".join([
            f"rollout batch per process:  {self.local_rollout_batch_size} prompts "
            "(per_device_train_batch_size x gradient_accumulation_steps x num_mini_batches)",
            f"optimizer steps per PPO step: {self.num_ppo_epochs * self.num_mini_batches}",
            f"devices:                    {self.world_size}",
            f"training prompts:           {training_prompts:,}",
            f"PPO steps:                  {self.max_steps}",
        ])

    @property
    def local_rollout_batch_size(self) -> int:
        """Replies each process generates per PPO step."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_mini_batches
