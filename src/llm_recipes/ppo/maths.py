"""PPO's mathematics as pure functions of tensors of shape (batch, response tokens), with a mask of the tokens that
count (tested on fixed tensors in tests/test_ppo_math.py)."""


import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is true (over everything, or along `dim`)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `values` where `mask` is true; unbiased (Bessel's correction) by default."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        if count < 2:
            return torch.zeros_like(variance)
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """`values` scaled to unit variance (and zero mean with `shift_mean`), the statistics taken where `mask` is
    true; masked entries are returned as 0."""
    mean, variance = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def response_mask(responses: torch.Tensor, stop_token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Which tokens of each response count: those up to and including its first stop token (all of them when it
    has none). Returns the mask and whether each response ended with a stop token."""
    is_stop = torch.isin(responses, torch.tensor(stop_token_ids, device=responses.device))
    ended = is_stop.any(dim=1)
    last = torch.where(ended, is_stop.int().argmax(dim=1), responses.shape[1] - 1)
    positions = torch.arange(responses.shape[1], device=responses.device)
    return positions[None, :] <= last[:, None], ended


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the log-probabilities of tokens sampled from the policy
    (Schulman, "Approximating KL divergence"): k1 = log r, k2 = (log r)^2 / 2, k3 = (1/r - 1) + log r, with
    r = policy / reference. k1 is unbiased but can be negative; k3 is unbiased and never negative."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl_estimator: expects k1, k2 or k3, got {estimator!r}.")


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, kl_coef: float, mask: torch.Tensor) -> torch.Tensor:
    """Per-token rewards: -kl_coef * kl on every counted token, plus the sequence's score on its last one."""
    rewards = -kl_coef * kl * mask
    last = mask.long().sum(dim=1).clamp(min=1) - 1
    rewards[torch.arange(len(scores), device=scores.device), last] += scores
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation (Schulman et al., 2016), backwards over the tokens:
    delta_t = r_t + gamma * V_{t+1} - V_t,  A_t = delta_t + gamma * lam * A_{t+1},  returns = A + V.
    The value after the last counted token is 0 (the episode ends there); masked entries come back as 0."""
    mask = mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def clipped_policy_loss(logprobs, old_logprobs, advantages, mask, cliprange: float):
    """PPO's clipped surrogate: mean over counted tokens of max(-A * r, -A * clip(r, 1 - eps, 1 + eps)), with
    r = exp(logprobs - old_logprobs). Returns the loss, the fraction of tokens where clipping bit, and the
    approximate KL to the rollout policy, mean((log r)^2) / 2."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = 0.5 * masked_mean(log_ratio.detach() ** 2, mask)
    return loss, clipfrac, approx_kl


def clipped_value_loss(values, old_values, returns, mask, cliprange_value: float):
    """PPO's clipped value loss: 0.5 * mean over counted tokens of max((V - R)^2, (V_clip - R)^2), with V_clip the
    new value kept within cliprange_value of the rollout's. Returns the loss and the fraction clipped."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    clipfrac = masked_mean((clipped_loss > unclipped_loss).float(), mask)
    return loss, clipfrac


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns) over counted tokens: 1 is a perfect value model, 0 no better than
    a constant, negative worse than one."""
    return 1 - masked_var(returns - values, mask) / masked_var(returns, mask).clamp(min=1e-8)


class AdaptiveKLController:
    """Ziegler et al. (2019): move kl_coef so that the observed KL approaches `target`, by at most 20% of the error
    per `horizon` episodes: kl_coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * episodes / horizon."""

    def __init__(self, kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, current_kl: float, episodes: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * episodes / self.horizon


def prompt_indices(num_prompts: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The prompts of PPO step `step` (counted from 0): batches of a fresh shuffle of the data every epoch, the
    last partial batch of an epoch dropped. A function of the step alone, so that a resumed run sees what an
    uninterrupted one would."""
    per_epoch = num_prompts // batch_size
    if per_epoch == 0:
        raise ValueError(f"The training set has {num_prompts} prompts, fewer than one rollout batch ({batch_size}).")
    epoch, index = divmod(step, per_epoch)
    order = torch.randperm(num_prompts, generator=torch.Generator().manual_seed(seed + epoch))
    return order[index * batch_size : (index + 1) * batch_size].tolist()
