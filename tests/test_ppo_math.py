"""PPO's maths on fixed tensors, each against numbers worked out by hand."""

import math

import pytest
import torch

from llm_recipes.ppo.maths import (
    AdaptiveKLController,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    kl_penalty,
    masked_mean,
    masked_var,
    masked_whiten,
    prompt_indices,
    response_mask,
    token_rewards,
)

EOS, PAD = 1, 0


def test_gae_matches_a_hand_computed_three_step_example():
    # gamma 0.9, lambda 0.5; the value after the last token is 0 (the episode ends).
    # delta = [0 + .9*.4 - .5, 0 + .9*.8 - .4, 1 + 0 - .8] = [-.14, .32, .2]
    # A_2 = .2;  A_1 = .32 + .45 * .2 = .41;  A_0 = -.14 + .45 * .41 = .0445
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.4, 0.8]])
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.5)
    assert torch.allclose(advantages, torch.tensor([[0.0445, 0.41, 0.2]]))
    assert torch.allclose(returns, torch.tensor([[0.5445, 0.81, 1.0]]))


def test_gae_ends_the_episode_at_the_last_counted_token():
    # The padding's reward (99) and value (7) must not leak into the counted tokens:
    # A_1 = 1 - .4 = .6;  A_0 = (.9*.4 - .5) + .45 * .6 = .13
    rewards = torch.tensor([[0.0, 1.0, 99.0]])
    values = torch.tensor([[0.5, 0.4, 7.0]])
    advantages, returns = gae(rewards, values, torch.tensor([[1.0, 1.0, 0.0]]), gamma=0.9, lam=0.5)
    assert torch.allclose(advantages, torch.tensor([[0.13, 0.6, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[0.63, 1.0, 0.0]]))


def test_gae_with_gamma_and_lambda_one_gives_reward_to_go_minus_value():
    rewards = torch.tensor([[0.1, -0.2, 1.0]])
    values = torch.tensor([[0.3, 0.2, 0.1]])
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert torch.allclose(returns, torch.tensor([[0.9, 0.8, 1.0]]))
    assert torch.allclose(advantages, returns - values)


def test_masked_mean_and_variance_ignore_masked_entries():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    assert masked_var(values, mask).item() == pytest.approx(1.0)  # unbiased: (1 + 0 + 1) / 2
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(2 / 3)
    assert torch.allclose(masked_mean(torch.tensor([[1.0, 3.0], [5.0, 9.0]]), torch.tensor([[1, 1], [1, 0]]), dim=1),
                          torch.tensor([2.0, 5.0]))


def test_whitening_uses_counted_tokens_only_and_zeroes_the_rest():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert torch.allclose(masked_whiten(values, mask), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-4)
    # Without shifting the mean, only the scale changes (variance 1 here, so the values stay).
    assert torch.allclose(masked_whiten(values, mask, shift_mean=False), torch.tensor([[1.0, 2.0, 3.0, 0.0]]),
                          atol=1e-4)


def test_response_mask_keeps_tokens_up_to_the_first_stop_token():
    responses = torch.tensor([
        [5, 6, EOS, 7, 8],      # ended at its third token; what follows is not the model's answer
        [5, EOS, EOS, PAD, PAD],  # a second stop token and padding after the first
        [5, 6, 7, 8, 9],        # never ended: every token counts
    ])
    mask, ended = response_mask(responses, [EOS])
    assert mask.int().tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert ended.tolist() == [True, True, False]


def test_response_mask_knows_several_stop_tokens():
    mask, ended = response_mask(torch.tensor([[5, 9, 6], [5, 6, 7]]), [EOS, 9])
    assert mask.int().tolist() == [[1, 1, 0], [1, 1, 1]] and ended.tolist() == [True, False]


def test_kl_estimators_on_a_known_ratio():
    # policy 0.5, reference 0.25: log r = log 2.
    logprobs, ref_logprobs = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_penalty(logprobs, ref_logprobs, "k1").item() == pytest.approx(math.log(2))
    assert kl_penalty(logprobs, ref_logprobs, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_penalty(logprobs, ref_logprobs, "k3").item() == pytest.approx(0.5 - 1 + math.log(2))
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        kl_penalty(logprobs, ref_logprobs, "k4")


def test_k1_and_k3_average_to_the_exact_kl_over_samples_from_the_policy():
    generator = torch.Generator().manual_seed(0)
    policy = torch.tensor([0.6, 0.3, 0.1])
    reference = torch.tensor([0.2, 0.5, 0.3])
    exact = (policy * (policy / reference).log()).sum()
    samples = torch.multinomial(policy, 200_000, replacement=True, generator=generator)
    logprobs, ref_logprobs = policy.log()[samples], reference.log()[samples]
    for estimator in ("k1", "k3"):
        assert kl_penalty(logprobs, ref_logprobs, estimator).mean().item() == pytest.approx(exact.item(), abs=5e-3)
    assert (kl_penalty(logprobs, ref_logprobs, "k3") >= 0).all()


def test_token_rewards_put_the_score_on_the_last_counted_token():
    scores = torch.tensor([1.0, 2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards = token_rewards(scores, kl, kl_coef=0.1, mask=mask)
    assert torch.allclose(rewards, torch.tensor([[-0.01, -0.02, 0.97], [-0.05, 1.95, 0.0]]))


def test_clipped_policy_loss_and_clip_fraction():
    # ratios 1.5, 0.5, 1.0 with advantages 1, 1, -1 and epsilon 0.2:
    #   max(-1.5, -1.2) = -1.2 (clipped), max(-0.5, -0.8) = -0.5, max(1, 1) = 1; the fourth token is masked.
    old = torch.zeros(1, 4)
    new = torch.tensor([[math.log(1.5), math.log(0.5), 0.0, 5.0]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, clipfrac, approx_kl = clipped_policy_loss(new, old, advantages, mask, cliprange=0.2)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.0) / 3)
    assert clipfrac.item() == pytest.approx(1 / 3)
    assert approx_kl.item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 3)


def test_policy_loss_gradient_vanishes_where_the_ratio_is_clipped():
    new = torch.tensor([[math.log(1.5), math.log(1.1)]], requires_grad=True)
    loss, _, _ = clipped_policy_loss(new, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), cliprange=0.2)
    loss.backward()
    assert new.grad[0, 0] == 0 and new.grad[0, 1] < 0  # only the unclipped token is pushed up


def test_clipped_value_loss_and_clip_fraction():
    # old values 0, returns 1, clip range 0.2: a value of 0.5 is clipped to 0.2, (0.2-1)^2 = .64 > (0.5-1)^2 = .25;
    # a value of -0.1 is within the range, (-1.1)^2 = 1.21. The third token is masked.
    values = torch.tensor([[0.5, -0.1, 9.0]])
    loss, clipfrac = clipped_value_loss(values, torch.zeros(1, 3), torch.ones(1, 3), torch.tensor([[1.0, 1.0, 0.0]]),
                                        cliprange_value=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.21) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_explained_variance_of_perfect_and_constant_value_models():
    returns = torch.tensor([[1.0, 2.0, 4.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 5.0), returns, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_adaptive_kl_controller_moves_towards_the_target_by_at_most_twenty_percent_of_the_error():
    controller = AdaptiveKLController(0.1, target=6.0, horizon=100)
    controller.update(current_kl=12.0, episodes=10)  # error +100% clipped to +20%: x (1 + 0.2 * 10 / 100)
    assert controller.value == pytest.approx(0.102)
    controller = AdaptiveKLController(0.1, target=6.0, horizon=100)
    controller.update(current_kl=5.7, episodes=10)  # error -5%
    assert controller.value == pytest.approx(0.1 * (1 - 0.05 * 0.1))


def test_prompt_indices_cover_every_prompt_once_per_epoch_and_depend_only_on_the_step():
    epoch = [i for step in range(5) for i in prompt_indices(20, 4, step, seed=3)]
    assert sorted(epoch) == list(range(20))
    assert prompt_indices(20, 4, 7, seed=3) == prompt_indices(20, 4, 7, seed=3)
    assert [i for step in range(5, 10) for i in prompt_indices(20, 4, step, seed=3)] != epoch  # reshuffled
    assert len(prompt_indices(22, 4, 4, seed=3)) == 4  # the last partial batch is dropped
