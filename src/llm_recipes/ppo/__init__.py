"""PPO for language models (RLHF form): our own trainer, since TRL 1.13+ no longer ships one.

The algorithm is the one of Ziegler et al. (2019) and Ouyang et al. (2022), as "The N+ implementation details of
RLHF with PPO" (Huang et al., 2024) and TRL's old PPOTrainer lay it out. Every PPO step:

1. rollout: sample a reply to each prompt of the batch from the policy (temperature, top-p, at most
   `max_completion_length` tokens, stopping on EOS); tokens after the first stop token are padding;
2. scoring: the policy's and the reference's log-probabilities of the reply, the value model's value before each of its
   tokens, and the reply's score: the weighted sum of the reward functions and reward models (`reward_funcs`,
   `reward_weights`), less `missing_eos_penalty` when the reply never ended;
3. per-token rewards: -kl_coef * KL(policy || reference) on every token (estimator k1, k2 or k3), and the score on the
   last one; the KL coefficient is fixed or adapted towards `kl_target` (Ziegler et al.'s controller);
4. advantages by GAE (gamma, lam), whitened over the batch; returns = advantages + values;
5. `num_ppo_epochs` passes over the batch in `num_mini_batches` minibatches, each an optimizer step accumulated over
   micro-batches of `per_device_train_batch_size`: clipped policy loss + vf_coef * clipped value loss.

The maths are pure functions of tensors in maths.py (tested on fixed tensors in tests/test_ppo_math.py).
`PPOTrainer` subclasses transformers' Trainer for what Trainer does well (accelerator and DDP set-up, optimizer and
scheduler, callbacks and `report_to`, checkpoints and their rotation) and replaces its loop with the PPO loop above.
The policy and the value model train together as one module (`PolicyAndValue`), so one optimizer and one DDP
wrapper cover both. A checkpoint holds the policy (as a model Transformers or peft reloads), the value model in
`value_model/`, the KL coefficient, optimizer, scheduler and RNG states; a run resumes from it to the same weights.

The value model is a sequence-classification model (a backbone and a one-output linear `score` head) applied to every
position, not only the last. It starts from the reward model when there is one (its head already predicts the final
score, so early value estimates are sensible), else from the policy's checkpoint with a new head, which
scripts/ppo.py starts at zero (a random head's values are noise that drowns a sparse reward). The reference is a
frozen copy of the starting policy or, with LoRA, the policy itself with its adapters disabled (no second copy).

`value_head: shared` replaces the value model by one linear head on the policy's last hidden states (TRL's old
`AutoModelForCausalLMWithValueHead` shares the trunk the same way). Its values are read off the passes the policy
makes anyway: generation's hidden states (with `rollout_logprobs`) and the update's forward pass, so a PPO step costs
a GRPO step's passes plus the reference's. The head's input is detached: the value loss trains the head alone and
cannot pull the features the policy acts on. A checkpoint then holds `value_head.safetensors` instead of
`value_model/`.

Several processes: data-parallel (DDP, `accelerate launch --multi_gpu`, or gloo on CPU). DeepSpeed and FSDP are
refused: the frozen reference and reward models would need their own sharded set-up.
"""

from llm_recipes.ppo.config import PPOConfig
from llm_recipes.ppo.trainer import PolicyAndValue, PPOTrainer, load_value_model

__all__ = ["PPOConfig", "PPOTrainer", "PolicyAndValue", "load_value_model"]
