"""How long an RL stage's rollouts take, and how many tokens they generate per second.

Generation is the part of an RL step that the trainers' own logs leave out: TRL's GRPOTrainer times it only for
trackers (wandb, mlflow, trackio), not in the metrics it logs. `time_grpo_generation` wraps the one method through
which every GRPO rollout passes, whatever the backend (Transformers or vLLM), so the stage summary can say what
share of the training time went to generating and at what speed.
"""

import time


class RolloutClock:
    """Seconds spent generating training rollouts, and the tokens generated, summed over the run."""

    def __init__(self):
        self.seconds, self.tokens, self.calls = 0.0, 0, 0

    def add(self, seconds: float, tokens: int) -> None:
        self.seconds, self.tokens, self.calls = self.seconds + seconds, self.tokens + tokens, self.calls + 1

    def summary(self, train_seconds: float | None) -> dict:
        if not self.calls:
            return {}
        report = {"generation_seconds": round(self.seconds, 3), "generated_tokens": self.tokens,
                  "generation_tokens_per_second": self.tokens / max(self.seconds, 1e-9)}
        if train_seconds:
            report["generation_share"] = self.seconds / train_seconds
        return report


def time_grpo_generation(trainer) -> RolloutClock:
    """Time every training rollout of a GRPOTrainer (`_generate_single_turn`; evaluation's are left out)."""
    clock, generate = RolloutClock(), trainer._generate_single_turn

    def timed(*args, **kwargs):
        started = time.perf_counter()
        completion_ids, logprobs = generate(*args, **kwargs)
        if trainer.model.training:
            clock.add(time.perf_counter() - started, sum(len(ids) for ids in completion_ids))
        return completion_ids, logprobs

    trainer._generate_single_turn = timed
    return clock
