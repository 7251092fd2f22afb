"""`PPOTrainer`: the PPO loop on transformers' Trainer, its step in the named parts of TRL's RL trainers (rollout,
score, update, metrics); and the value model's set-up (`load_value_model`). See llm_recipes/ppo/__init__.py for the
algorithm."""

import json
import logging
import math
import os
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    Trainer,
    TrainerState,
)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import TrainOutput, speed_metrics
from trl.data_utils import is_conversational, maybe_apply_chat_template
from trl.trainer.utils import disable_dropout_in_model, entropy_from_logits, pad, selective_log_softmax

from llm_recipes.ppo import maths
from llm_recipes.ppo.config import PPOConfig
from llm_recipes.rewards import reward_funcs_from_recipe
from llm_recipes.rollout_timing import RolloutClock

logger = logging.getLogger(__name__)

PPO_STATE = "ppo_state.json"  # the KL coefficient (adaptive), kept in every checkpoint
VALUE_MODEL_DIR = "value_model"
VALUE_HEAD_FILE = "value_head.safetensors"  # value_head: shared


class PolicyAndValue(nn.Module):
    """The policy and its values as one trained module: one optimizer, one DDP wrapper. The values come from a
    value model of its own, or, with `value_model=None`, from `value_head`, one linear layer on the policy's last
    hidden states (value_head: shared)."""

    def __init__(self, policy: nn.Module, value_model: PreTrainedModel | None):
        super().__init__()
        self.policy, self.value_model = policy, value_model
        if value_model is None:
            # Zero at first, as a new head of a separate value model: the first advantages are the whitened scores.
            self.value_head = nn.Linear(policy.config.hidden_size, 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        elif not hasattr(value_model, "score"):
            raise ValueError(f"The value model ({type(value_model).__name__}) has no `score` head; use a checkpoint "
                             "that AutoModelForSequenceClassification loads with a `score` layer (decoder LMs do).")

    @property
    def shared(self) -> bool:
        return self.value_model is None

    def head_values(self, hidden: torch.Tensor) -> torch.Tensor:
        """The shared head's values of hidden states. detach(): the value loss trains the head alone, so fitting
        the returns cannot pull the features the policy acts on."""
        return self.value_head(hidden.detach().float()).squeeze(-1)

    def forward(self, input_ids, attention_mask, position_ids, response_length: int):
        """Logits and values at the positions that predict the last `response_length` tokens."""
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          logits_to_keep=response_length + 1, use_cache=False, output_hidden_states=self.shared)
        if self.shared:  # one pass of the policy gives both
            return out.logits[:, :-1], self.head_values(out.hidden_states[-1][:, -response_length - 1 : -1])
        values = token_values(self.value_model, input_ids, attention_mask, position_ids, response_length)
        return out.logits[:, :-1], values


def token_values(value_model, input_ids, attention_mask, position_ids, response_length: int) -> torch.Tensor:
    """The value model's `score` head read at every position that precedes one of the last `response_length` tokens."""
    backbone = getattr(value_model, value_model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False).last_hidden_state
    return value_model.score(hidden[:, -response_length - 1 : -1]).squeeze(-1).float()


def _is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


@dataclass
class Rollout:
    """A batch of prompts (left-padded) and the policy's sampled replies (right-padded after the stop token)."""

    queries: torch.Tensor
    query_mask: torch.Tensor
    responses: torch.Tensor
    mask: torch.Tensor  # the reply tokens that count: up to and including the first stop token
    ended: torch.Tensor  # whether each reply emitted a stop token
    logprobs: torch.Tensor | None = None  # the policy's, from generation (rollout_logprobs); else scored after
    values: torch.Tensor | None = None  # the shared head's, from generation's hidden states (rollout_logprobs)


@dataclass
class Scored:
    """What PPO learns from in a rollout: the policy's log-probabilities and the values when sampled, the scores
    (per reward function and weighted), the per-token KL, and GAE's advantages and returns."""

    logprobs: torch.Tensor
    values: torch.Tensor
    per_func: torch.Tensor  # (replies, reward functions); NaN where a function had no opinion
    scores: torch.Tensor
    kl: torch.Tensor
    kl_coef: float
    advantages: torch.Tensor
    returns: torch.Tensor
    maskf: torch.Tensor


def load_value_model(args: PPOConfig, model_args, tokenizer, trust_remote_code: bool = False) -> PreTrainedModel:
    """The value model: from `value_model_path`, else the first reward model of `reward_funcs` (its head already
    predicts the final score, so early values are sensible), else the policy's checkpoint with a new head. A new
    head starts at zero: every value is 0, so the first advantages are the whitened scores (REINFORCE with the batch
    mean as baseline) instead of a random head's noise, which drowns a sparse reward."""
    from llm_recipes.model import torch_dtype
    from llm_recipes.recipe import RecipeError
    from llm_recipes.rewards import is_reward_model

    reward_models = [name for name in args.reward_funcs if is_reward_model(name)]
    path = args.value_model_path or (reward_models[0] if reward_models else model_args.model_name_or_path)
    value_model, loading = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=torch_dtype(model_args.dtype), trust_remote_code=trust_remote_code,
        output_loading_info=True)
    if any(key.startswith("score.") for key in loading["missing_keys"]):
        for parameter in value_model.score.parameters():
            nn.init.zeros_(parameter)
    if value_model.config.vocab_size < len(tokenizer):
        raise RecipeError(f"value_model_path: {path} has a vocabulary of {value_model.config.vocab_size} tokens, "
                          f"smaller than the policy's tokenizer ({len(tokenizer)}); the value model reads the "
                          "policy's tokens, so start it from a model with the policy's tokenizer.")
    value_model.config.pad_token_id = tokenizer.pad_token_id
    logger.info("Value model from %s", path)
    return value_model


class PPOTrainer(Trainer):
    """PPO on a policy, a value model and rewards (functions, reward models, or both, weighted).

    Args:
        args: the run's `PPOConfig`.
        processing_class: the policy's tokenizer (left padding is used for generation).
        model: the policy, a causal LM (a peft model with LoRA: the reference is then the policy with adapters off).
        ref_model: a frozen copy of the starting policy; None with a peft policy.
        value_model: a sequence-classification model with one output, trained alongside the policy; None with
            `value_head: shared` (a linear head on the policy's last hidden states).
        reward_funcs: callables in TRL's reward-function form, reward models, or their paths (default: built from
            `args.reward_funcs`); weighted by `args.reward_weights`.
        train_dataset, eval_dataset: prompts (`prompt`, conversational or text) and the columns the reward functions
            read (e.g. `answer`). Evaluation generates greedily and reports each reward's mean, the KL to the
            reference, and the reply length.
    """

    def __init__(self, args: PPOConfig, processing_class, model, value_model=None, ref_model=None, reward_funcs=None,
                 train_dataset=None, eval_dataset=None, reward_processing_classes=None, callbacks=None):
        if (value_model is None) != (args.value_head == "shared"):
            raise ValueError("Pass a value_model with value_head: separate, and none with value_head: shared.")
        if _is_peft(model) == (ref_model is not None):
            raise ValueError("Pass ref_model for a full policy, and none for a peft (LoRA) policy, whose reference "
                             "is itself with adapters disabled.")
        if processing_class.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; PPO pads prompts and replies.")
        self.ref_model = ref_model
        self.rollout_clock = RolloutClock()  # rollout seconds and tokens, for the stage summary
        for m in (model, value_model, ref_model):
            if m is not None:
                disable_dropout_in_model(m)
        wrapped = PolicyAndValue(model, value_model)
        super().__init__(model=wrapped, args=args, processing_class=processing_class, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, data_collator=lambda rows: rows, callbacks=callbacks)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError("PPOTrainer runs data-parallel (DDP) only; DeepSpeed and FSDP are not supported.")
        if ref_model is not None:
            ref_model.requires_grad_(False)
            self.ref_model = ref_model.to(self.accelerator.device).eval()

        if reward_funcs is None:
            names, weights = reward_funcs_from_recipe(args.reward_funcs, args.reward_weights,
                                                      args.max_completion_length)
        else:
            names, weights = reward_funcs, args.reward_weights or [1.0] * len(reward_funcs)
        self.reward_funcs, self.reward_weights, self.reward_names = [], weights, []
        self.reward_processing_classes = []
        for i, func in enumerate(names):
            tokenizer = (reward_processing_classes or [None] * len(names))[i]
            if isinstance(func, str):
                func = AutoModelForSequenceClassification.from_pretrained(func, num_labels=1)
            if isinstance(func, PreTrainedModel):
                func.requires_grad_(False)
                func = func.to(self.accelerator.device).eval()
                tokenizer = tokenizer or AutoTokenizer.from_pretrained(func.config._name_or_path)
                if func.config.pad_token_id is None:
                    func.config.pad_token_id = tokenizer.pad_token_id
                self.reward_names.append(func.config._name_or_path.rstrip("/").split("/")[-1] or f"model_{i}")
            else:
                self.reward_names.append(func.__name__)
            self.reward_funcs.append(func)
            self.reward_processing_classes.append(tokenizer)

        self.kl_controller = maths.AdaptiveKLController(args.kl_coef, args.kl_target, args.kl_horizon)
        eos = model.generation_config.eos_token_id
        self.stop_token_ids = sorted({processing_class.eos_token_id, *(eos if isinstance(eos, list) else [eos])}
                                     - {None})
        sampling = dict(do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=0)
        self.generation_config = GenerationConfig(
            max_new_tokens=args.max_completion_length, eos_token_id=self.stop_token_ids,
            pad_token_id=processing_class.pad_token_id, use_cache=True, **sampling)
        self.eval_generation_config = GenerationConfig(
            max_new_tokens=args.max_completion_length, eos_token_id=self.stop_token_ids,
            pad_token_id=processing_class.pad_token_id, use_cache=True, do_sample=False)
        self.train_dataset = self._tokenize(train_dataset) if train_dataset is not None else None
        self.eval_dataset = self._tokenize(eval_dataset) if eval_dataset is not None else None
        self._saving_checkpoint = False

    # Data

    def _tokenize(self, dataset):
        """Prompts through the chat template (conversational ones) and the tokenizer, as `prompt_ids`."""
        tokenizer, limit = self.processing_class, self.args.max_prompt_length

        def tokenize(example):
            text = maybe_apply_chat_template({"prompt": example["prompt"]}, tokenizer)["prompt"]
            return {"prompt_ids": tokenizer(text, add_special_tokens=False)["input_ids"][-limit:]}

        return dataset.map(tokenize, desc="Tokenizing prompts")

    # Rollouts and scoring

    def _sequences(self, prompt_ids: list[list[int]]):
        """Prompts left-padded into one batch, with their attention mask."""
        pad_id = self.processing_class.pad_token_id
        prompts = [torch.tensor(p, dtype=torch.long) for p in prompt_ids]
        queries = pad(prompts, padding_value=pad_id, padding_side="left").to(self.accelerator.device)
        masks = pad([torch.ones_like(p) for p in prompts], padding_value=0, padding_side="left")
        return queries, masks.to(self.accelerator.device)

    @torch.no_grad()
    def _generate(self, queries, query_mask, generation_config, with_logprobs: bool = False):
        """Replies to a batch of prompts, in chunks of local_rollout_forward_batch_size, padded to one length.
        Returns `(replies, log-probabilities, values)`. When `with_logprobs`, the policy's log-probability of each
        reply token at the rollout temperature, from the logits generation computed anyway, and with the shared
        value head, its value at each reply token, from generation's last hidden states; else None and None."""
        chunk, unwrapped = self.args.local_rollout_forward_batch_size, self.model
        with_values = with_logprobs and unwrapped.shared
        replies, logprobs, values = [], [], []
        for start in range(0, len(queries), chunk):  # the module itself: DDP's wrapper shares its parameters
            q, m = queries[start : start + chunk], query_mask[start : start + chunk]
            out = unwrapped.policy.generate(input_ids=q, attention_mask=m, generation_config=generation_config,
                                            return_dict_in_generate=True, output_logits=with_logprobs,
                                            output_hidden_states=with_values)
            replies.append(out.sequences[:, q.shape[1] :])
            if with_logprobs:
                logits = torch.stack(out.logits, dim=1).float() / self.args.temperature
                logprobs.append(selective_log_softmax(logits, replies[-1]))
            if with_values:  # step t's last position is the one that predicts reply token t
                hidden = torch.stack([layers[-1][:, -1] for layers in out.hidden_states], dim=1)
                values.append(unwrapped.head_values(hidden))
        width = max(r.shape[1] for r in replies)
        pad_id = self.processing_class.pad_token_id
        responses = torch.cat([nn.functional.pad(r, (0, width - r.shape[1]), value=pad_id) for r in replies])

        def padded(parts):
            return torch.cat([nn.functional.pad(p, (0, width - p.shape[1])) for p in parts]) if parts else None

        return responses, padded(logprobs), padded(values)

    @staticmethod
    def _model_inputs(queries, query_mask, responses, mask):
        input_ids = torch.cat([queries, responses], dim=1)
        attention_mask = torch.cat([query_mask, mask.long()], dim=1)
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        return input_ids, attention_mask, position_ids

    def _logprobs(self, model, input_ids, attention_mask, position_ids, responses, temperature: float):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       logits_to_keep=responses.shape[1] + 1, use_cache=False).logits[:, :-1]
        return selective_log_softmax(logits.float() / temperature, responses)

    @torch.no_grad()
    def _score_forward(self, queries, query_mask, responses, mask, temperature: float,
                       policy_logprobs: torch.Tensor | None = None, values: torch.Tensor | None = None):
        """Log-probabilities of the replies under the policy and the reference, and the values, in chunks. With
        `policy_logprobs` (from generation), the policy is not run again; nor, with the shared head, for `values`.
        With the shared head and no log-probabilities from generation, one pass of the policy gives both."""
        chunk, unwrapped = self.args.local_rollout_forward_batch_size, self.model
        out = defaultdict(list)
        for start in range(0, len(queries), chunk):
            part = slice(start, start + chunk)
            inputs = self._model_inputs(queries[part], query_mask[part], responses[part], mask[part])
            if policy_logprobs is None and unwrapped.shared:
                logits, part_values = unwrapped(*inputs, response_length=responses.shape[1])
                out["logprobs"].append(selective_log_softmax(logits.float() / temperature, responses[part]))
                out["values"].append(part_values)
            elif policy_logprobs is None:
                out["logprobs"].append(self._logprobs(unwrapped.policy, *inputs, responses[part], temperature))
            with self._reference() as reference:
                out["ref_logprobs"].append(self._logprobs(reference, *inputs, responses[part], temperature))
            if not unwrapped.shared:
                out["values"].append(token_values(unwrapped.value_model, *inputs, responses.shape[1]))
        if policy_logprobs is not None:
            out["logprobs"] = [policy_logprobs]
        if values is not None:
            out["values"] = [values]
        return {k: torch.cat(v) for k, v in out.items()}

    @contextmanager
    def _reference(self):
        """The reference policy: the frozen copy, or the peft policy with its adapters disabled."""
        if self.ref_model is not None:
            yield self.ref_model
        else:
            with self.model.policy.disable_adapter():
                yield self.model.policy

    def _rewards(self, examples: list[dict], responses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Each reward function's and reward model's score of each reply, shape (replies, rewards); NaN where a
        function returned None."""
        tokenizer = self.processing_class
        ids = [r[m].tolist() for r, m in zip(responses, mask)]
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        prompts = [e["prompt"] for e in examples]
        conversational = is_conversational({"prompt": prompts[0]})
        completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
        columns = {k: [e[k] for e in examples] for k in examples[0] if k not in ("prompt", "prompt_ids")}
        scores = torch.zeros(len(examples), len(self.reward_funcs), device=self.accelerator.device)
        for i, (func, reward_tokenizer) in enumerate(zip(self.reward_funcs, self.reward_processing_classes)):
            if isinstance(func, PreTrainedModel):
                if conversational:
                    full = [reward_tokenizer.apply_chat_template(p + c, tokenize=False)
                            for p, c in zip(prompts, completions)]
                else:
                    full = [p + c for p, c in zip(prompts, completions)]
                inputs = reward_tokenizer(full, return_tensors="pt", padding=True, padding_side="right",
                                          add_special_tokens=False).to(self.accelerator.device)
                with torch.no_grad():
                    scores[:, i] = func(**inputs).logits[:, 0].float()
            else:
                values = func(prompts=prompts, completions=completions, completion_ids=ids,
                              trainer_state=self.state, **columns)
                scores[:, i] = torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float32)
        return scores

    def _weighted(self, per_func: torch.Tensor) -> torch.Tensor:
        weights = torch.tensor(self.reward_weights, device=per_func.device, dtype=per_func.dtype)
        return (per_func * weights).nansum(dim=1)

    # The loop

    def train(self, resume_from_checkpoint: str | None = None, **kwargs) -> TrainOutput:
        """Run PPO for `max_steps` PPO steps (or `num_train_epochs` passes over the prompts), resuming from a
        checkpoint of an earlier run when given one."""
        args = self.args
        self.is_in_train = True
        batch_size = args.local_rollout_batch_size
        global_batch = batch_size * self.accelerator.num_processes
        if len(self.train_dataset) < global_batch:
            raise ValueError(f"The training set has {len(self.train_dataset)} prompts, fewer than one rollout batch "
                             f"({global_batch}: per_device_train_batch_size x gradient_accumulation_steps x "
                             "num_mini_batches x processes).")
        steps_per_epoch = len(self.train_dataset) // global_batch
        max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)

        self._set_up_training(resume_from_checkpoint, max_steps, steps_per_epoch)

        start_time, start_step = time.time(), self.state.global_step
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        if args.eval_on_start and self.eval_dataset is not None and start_step == 0:
            self.evaluate()
        logged = defaultdict(list)
        while self.state.global_step < max_steps and not self.control.should_training_stop:
            self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
            for key, value in self._ppo_step(global_batch).items():
                logged[key].append(value)
            self.state.global_step += 1
            self.state.epoch = self.state.global_step / steps_per_epoch
            self.lr_scheduler.step()
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            if self.control.should_log:
                self.log({k: sum(v) / len(v) for k, v in logged.items()}
                         | {"learning_rate": self.lr_scheduler.get_last_lr()[0], "kl_coef": self.kl_controller.value})
                logged.clear()
                self.control.should_log = False
            if self.control.should_evaluate and self.eval_dataset is not None:
                self.evaluate()
                self.control.should_evaluate = False
            if self.control.should_save:
                self._save_checkpoint(self.model_wrapped, trial=None)
                self.control = self.callback_handler.on_save(args, self.state, self.control)
                self.control.should_save = False

        steps = self.state.global_step - start_step
        metrics = speed_metrics("train", start_time, num_samples=steps * global_batch, num_steps=steps)
        self.log(metrics)
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        self.is_in_train = False
        return TrainOutput(self.state.global_step, None, metrics)

    def _set_up_training(self, resume_from_checkpoint: str | None, max_steps: int, steps_per_epoch: int) -> None:
        """Trainer's state, optimizer and scheduler, restored from the checkpoint when resuming. Trainer has no
        public hook for a loop of its own, so its private loaders are called as its own `_inner_training_loop`
        calls them: the model weights, the optimizer and scheduler states, and the RNG states (which make a resumed
        run sample the same rollouts as an uninterrupted one)."""
        args = self.args
        if resume_from_checkpoint is not None:
            self._load_from_checkpoint(resume_from_checkpoint)
        self.state = TrainerState(
            is_local_process_zero=self.is_local_process_zero(), is_world_process_zero=self.is_world_process_zero(),
            stateful_callbacks=[cb for cb in self.callback_handler.callbacks + [self.control]
                                if isinstance(cb, ExportableState)])
        self.state.compute_steps(args, max_steps)
        if resume_from_checkpoint is not None:
            self.state = TrainerState.load_from_json(os.path.join(resume_from_checkpoint, TRAINER_STATE_NAME))
        self.state.max_steps, self.state.num_train_epochs = max_steps, math.ceil(max_steps / steps_per_epoch)
        self.create_optimizer()
        self.model_wrapped, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.create_scheduler(num_training_steps=max_steps)
        if resume_from_checkpoint is not None:
            self._load_optimizer_and_scheduler(resume_from_checkpoint)
            self._load_rng_state(resume_from_checkpoint)
        for attr in ("model", "optimizer", "lr_scheduler"):
            setattr(self.callback_handler, attr, getattr(self, attr))

    def _ppo_step(self, global_batch: int) -> dict[str, float]:
        """One PPO step, in the named parts of TRL's RL trainers: rollout, score, update, metrics. Returns the
        step's metrics, averaged over processes."""
        indices = maths.prompt_indices(len(self.train_dataset), global_batch, self.state.global_step, self.args.seed)
        accelerator = self.accelerator
        examples = [self.train_dataset[i] for i in indices[accelerator.process_index :: accelerator.num_processes]]
        self.model_wrapped.train()
        timings, started = {}, time.perf_counter()
        rollout = self._rollout(examples)
        timings["time/generation"] = time.perf_counter() - started
        self.rollout_clock.add(timings["time/generation"], int(rollout.mask.sum()))
        timer = time.perf_counter()
        scored = self._score(rollout, examples)
        timings["time/scoring"] = time.perf_counter() - timer
        timer = time.perf_counter()
        stats = self._update(rollout, scored)
        timings["time/training"] = time.perf_counter() - timer
        result = self._step_metrics(rollout, scored, stats, global_batch)
        timings["time/step"] = time.perf_counter() - started
        return result | timings

    def _rollout(self, examples: list[dict]) -> Rollout:
        """Sample a reply to each prompt from the policy; tokens after the first stop token are padding."""
        queries, query_mask = self._sequences([e["prompt_ids"] for e in examples])
        responses, logprobs, values = self._generate(queries, query_mask, self.generation_config,
                                                     with_logprobs=self.args.rollout_logprobs)
        mask, ended = maths.response_mask(responses, self.stop_token_ids)
        return Rollout(queries, query_mask, responses, mask, ended, logprobs, values)

    def _score(self, rollout: Rollout, examples: list[dict]) -> Scored:
        """Log-probabilities, values, the replies' scores, per-token rewards (KL penalty and score) and GAE."""
        args = self.args
        forward = self._score_forward(rollout.queries, rollout.query_mask, rollout.responses, rollout.mask,
                                      args.temperature, policy_logprobs=rollout.logprobs, values=rollout.values)
        per_func = self._rewards(examples, rollout.responses, rollout.mask)
        scores = self._weighted(per_func)
        if args.missing_eos_penalty is not None:
            scores = scores - args.missing_eos_penalty * (~rollout.ended).float()
        maskf = rollout.mask.float()
        kl = maths.kl_penalty(forward["logprobs"], forward["ref_logprobs"], args.kl_estimator) * maskf
        kl_coef = self.kl_controller.value
        rewards = maths.token_rewards(scores, kl, kl_coef, maskf)
        if args.whiten_rewards:
            rewards = maths.masked_whiten(rewards, maskf, shift_mean=False)
        values = forward["values"] * maskf
        advantages, returns = maths.gae(rewards, values, maskf, args.gamma, args.lam)
        if args.whiten_advantages:
            advantages = maths.masked_whiten(advantages, maskf)
        return Scored(forward["logprobs"], values, per_func, scores, kl, kl_coef, advantages, returns, maskf)

    def _update(self, rollout: Rollout, scored: Scored) -> dict[str, list]:
        """`num_ppo_epochs` passes over the rollout in `num_mini_batches` shuffled minibatches, each an optimizer
        step accumulated over micro-batches; returns the losses and ratios of every micro-batch."""
        args, model = self.args, self.model_wrapped
        batch_size, micro = args.local_rollout_batch_size, args.per_device_train_batch_size
        minibatch = batch_size // args.num_mini_batches
        stats = defaultdict(list)
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(batch_size, device=rollout.responses.device)
            for mb_start in range(0, batch_size, minibatch):
                mb = order[mb_start : mb_start + minibatch]
                micro_batches = [mb[i : i + micro] for i in range(0, len(mb), micro)]
                for j, idx in enumerate(micro_batches):
                    # Gradients are synchronised across processes on the last micro-batch only.
                    with nullcontext() if j == len(micro_batches) - 1 else self.accelerator.no_sync(model):
                        self._micro_batch_update(rollout, scored, idx, len(micro_batches), stats)
                if args.max_grad_norm and args.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
        return stats

    def _micro_batch_update(self, rollout: Rollout, scored: Scored, idx, accumulation: int, stats: dict) -> None:
        """The clipped policy and value losses of one micro-batch, backpropagated; its statistics appended."""
        args, maskf = self.args, scored.maskf[idx]
        inputs = self._model_inputs(rollout.queries[idx], rollout.query_mask[idx], rollout.responses[idx],
                                    rollout.mask[idx])
        logits, new_values = self.model_wrapped(*inputs, response_length=rollout.responses.shape[1])
        logits = logits.float() / args.temperature
        new_logprobs = selective_log_softmax(logits, rollout.responses[idx])
        pg_loss, pg_clipfrac, approx_kl = maths.clipped_policy_loss(
            new_logprobs, scored.logprobs[idx], scored.advantages[idx], maskf, args.cliprange)
        vf_loss, vf_clipfrac = maths.clipped_value_loss(
            new_values, scored.values[idx], scored.returns[idx], maskf, args.cliprange_value)
        self.accelerator.backward((pg_loss + args.vf_coef * vf_loss) / accumulation)
        with torch.no_grad():
            stats["policy/entropy_avg"].append(maths.masked_mean(entropy_from_logits(logits), maskf))
            stats["policy/clipfrac_avg"].append(pg_clipfrac)
            stats["policy/approxkl_avg"].append(approx_kl)
            stats["loss/policy_avg"].append(pg_loss.detach())
            stats["loss/value_avg"].append(vf_loss.detach())
            stats["val/clipfrac_avg"].append(vf_clipfrac)
            stats["val/ratio"].append(maths.masked_mean(torch.exp(new_logprobs - scored.logprobs[idx]), maskf))

    def _step_metrics(self, rollout: Rollout, scored: Scored, stats: dict, global_batch: int) -> dict[str, float]:
        """The step's objective, value and reward metrics averaged over processes; adapts the KL coefficient."""
        maskf, kl_coef = scored.maskf, scored.kl_coef
        sequence_kl = scored.kl.sum(dim=1)
        metrics = {
            "objective/scores": scored.scores.mean(),
            "objective/kl": sequence_kl.mean(),
            "objective/entropy": (-scored.logprobs * maskf).sum(dim=1).mean(),
            "objective/non_score_reward": (-kl_coef * sequence_kl).mean(),
            "objective/rlhf_reward": (scored.scores - kl_coef * sequence_kl).mean(),
            "val/explained_variance": maths.explained_variance(scored.values, scored.returns, maskf),
            "val/num_eos_tokens": rollout.ended.float().sum(),
            "response_length": maskf.sum(dim=1).mean(),
            **{k: torch.stack(v).mean() for k, v in stats.items()},
            **{f"rewards/{name}": scored.per_func[:, i].nanmean() for i, name in enumerate(self.reward_names)},
        }
        names = list(metrics)
        averaged = self.accelerator.reduce(torch.stack([metrics[k].float() for k in names]), reduction="mean")
        result = dict(zip(names, averaged.tolist()))
        result["val/num_eos_tokens"] *= self.accelerator.num_processes  # a count over all replies, not a mean
        if self.args.adaptive_kl:
            self.kl_controller.update(result["objective/kl"], global_batch)
        result["episode"] = (self.state.global_step + 1) * global_batch
        return result

    # Evaluation

    @torch.no_grad()
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Greedy replies to the held-out prompts: the mean of each reward (`eval_<name>`), the weighted score
        (`eval_reward`, without the missing-EOS penalty), the KL to the reference summed over each reply's tokens
        (exact at each position, over the whole vocabulary), the reply length and the share of replies that ended."""
        dataset = self.eval_dataset if eval_dataset is None else self._tokenize(eval_dataset)
        accelerator, chunk = self.accelerator, self.args.local_rollout_forward_batch_size
        indices = list(range(len(dataset)))[accelerator.process_index :: accelerator.num_processes]
        sums = defaultdict(lambda: torch.zeros((), device=accelerator.device))  # over this process's prompts
        for start in range(0, len(indices), chunk):
            examples = [dataset[i] for i in indices[start : start + chunk]]
            for key, value in self._evaluation_sums(examples).items():
                sums[key] = sums[key] + value
        names = list(sums)
        totals = dict(zip(names, accelerator.reduce(torch.stack([sums[k] for k in names]), reduction="sum")))
        metrics = {f"{metric_key_prefix}_{key}": (totals[key] / totals["prompts"].clamp(min=1)).item()
                   for key in ("reward", "kl", "response_length", "eos_fraction")}
        totals = {key: value.item() for key, value in totals.items()}
        # Each function's mean is over the replies it scored: None (another task's row) is no opinion, and a
        # function that scored none of these prompts (another task's reward) has no mean to report.
        metrics.update({f"{metric_key_prefix}_{name}": totals[f"{name}/sum"] / totals[f"{name}/scored"]
                        for name in self.reward_names if totals[f"{name}/scored"]})
        self.log(dict(metrics))  # a copy: log() adds the epoch to what it is given
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _evaluation_sums(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Greedy replies to a chunk of held-out prompts, as sums: prompts, weighted score, exact KL to the
        reference, reply tokens, replies that ended, and per reward function its sum and the replies it scored."""
        queries, query_mask = self._sequences([e["prompt_ids"] for e in examples])
        responses, _, _ = self._generate(queries, query_mask, self.eval_generation_config)
        mask, ended = maths.response_mask(responses, self.stop_token_ids)
        input_ids, attention_mask, position_ids = self._model_inputs(queries, query_mask, responses, mask)
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      logits_to_keep=responses.shape[1] + 1, use_cache=False)
        log_probs = self.model.policy(**inputs).logits[:, :-1].float().log_softmax(dim=-1)
        with self._reference() as reference:  # outside it: with LoRA, the reference is the policy itself
            ref_log_probs = reference(**inputs).logits[:, :-1].float().log_softmax(dim=-1)
        kl = ((log_probs.exp() * (log_probs - ref_log_probs)).sum(dim=-1) * mask).sum(dim=1)
        per_func = self._rewards(examples, responses, mask)
        sums = {"prompts": torch.tensor(float(len(examples)), device=self.accelerator.device),
                "reward": self._weighted(per_func).sum(), "kl": kl.sum(), "response_length": mask.float().sum(),
                "eos_fraction": ended.float().sum()}
        totals, scored = per_func.nan_to_num(0.0).sum(dim=0), (~per_func.isnan()).float().sum(dim=0)
        for i, name in enumerate(self.reward_names):
            sums[f"{name}/sum"], sums[f"{name}/scored"] = totals[i], scored[i]
        return sums

    # Saving and resuming

    # Trainer's checkpointing (folder naming, rotation, optimizer/scheduler/RNG states, the trainer state written last)
    # is reused as is; its private `_save_checkpoint`, `_save` and `_load_from_checkpoint` are the places where what a
    # checkpoint holds is decided, and PPO's checkpoint holds more: the value model and the KL coefficient.

    def _save_checkpoint(self, model, trial=None) -> None:
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """The policy (a model Transformers or peft reloads) and tokenizer; in a checkpoint, also the value model
        and the KL coefficient, written before the trainer state that marks the checkpoint complete."""
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        unwrapped = self.model  # the module itself; DDP's wrapper shares its parameters
        unwrapped.policy.save_pretrained(output_dir)
        self.processing_class.save_pretrained(output_dir)
        if self._saving_checkpoint:
            if unwrapped.shared:
                save_file({k: v.detach().contiguous() for k, v in unwrapped.value_head.state_dict().items()},
                          os.path.join(output_dir, VALUE_HEAD_FILE))
            else:
                unwrapped.value_model.save_pretrained(os.path.join(output_dir, VALUE_MODEL_DIR))
            with open(os.path.join(output_dir, PPO_STATE), "w") as f:
                json.dump({"kl_coef": self.kl_controller.value}, f)
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        unwrapped = self.model
        super()._load_from_checkpoint(resume_from_checkpoint, model=unwrapped.policy)
        if unwrapped.shared:
            unwrapped.value_head.load_state_dict(load_file(os.path.join(resume_from_checkpoint, VALUE_HEAD_FILE)))
        else:
            super()._load_from_checkpoint(os.path.join(resume_from_checkpoint, VALUE_MODEL_DIR),
                                          model=unwrapped.value_model)
        with open(os.path.join(resume_from_checkpoint, PPO_STATE)) as f:
            self.kl_controller.value = json.load(f)["kl_coef"]

    def _issue_warnings_after_load(self, load_result) -> None:
        # A resumed run must continue from exactly what was saved; only an LM head tied to the embeddings is
        # absent from a checkpoint (save_pretrained writes shared weights once).
        tied = getattr(self.model.policy.config, "tie_word_embeddings", False)
        missing = [k for k in load_result.missing_keys if not (tied and k.endswith("lm_head.weight"))]
        if missing or load_result.unexpected_keys:
            raise ValueError(f"The checkpoint does not match the model: missing {missing}, unexpected "
                             f"{load_result.unexpected_keys}.")
