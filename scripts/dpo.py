"""Direct preference optimization: make the SFT model prefer the chosen reply to the rejected one, with TRL's
DPOTrainer.

    accelerate launch scripts/dpo.py --config recipes/tiny/dpo.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml scripts/dpo.py \
        --config recipes/qwen3-0.6b/dpo.yaml

DPO needs no reward model: the policy's implicit reward is β·(log π(y|x) − log π_ref(y|x)), and the loss
(`loss_type`: sigmoid, ipo, hinge, ...) widens the reward margin of chosen over rejected, with `beta` keeping the
policy near the reference. The reference is a frozen copy of the starting checkpoint; with `use_peft: true` it is the
policy itself with its LoRA adapters disabled (no second copy in memory), and with `precompute_ref_log_probs: true`
its log-probabilities are computed once before training and the copy is not kept.

Data are preference pairs (TRL's format): `prompt`, `chosen`, `rejected`, conversational or plain text; or
`chosen`/`rejected` alone, whose shared start is taken as the prompt. On the held-out pairs the stage summary gives,
before training (the parent, `eval_on_start`) and after:

- TRL's reward accuracy and margin (`eval_rewards/accuracies`, `eval_rewards/margins`). Before training the policy is
  its reference, so every implicit reward is 0: accuracy 0 and margin 0 by construction.
- the policy's own preference: how often it gives the chosen reply a higher log-probability than the rejected one
  (`eval_preference_accuracy`), and the mean difference (`eval_logp_margin`, summed over the reply's tokens). These
  compare the trained model with its parent on the same footing.
"""

import time

import torch
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer, ModelConfig, get_peft_config, get_quantization_config

from llm_recipes import stage
from llm_recipes.data import DatasetMixture, build_mixture, check_declared_columns
from llm_recipes.evaluation import add_lm_eval_callback
from llm_recipes.model import (
    fine_tuning_dry_run,
    format_count,
    load_causal_lm,
    load_tokenizer,
)
from llm_recipes.recipe import RecipeError, RecipeParser

# What a recipe of this stage may hold, and the columns its datasets need (the recipe test reads both).
ARGUMENTS = (stage.StageArguments, ModelConfig, DPOConfig)
DATASET_FORMAT = "preference"
# The policy's own preference on held-out pairs (PreferenceCallback), which compares it with its parent.
PREFERENCE_METRICS = ("eval_preference_accuracy", "eval_logp_margin")
# Held-out measurements of the stage summary, as DPOTrainer names them; each also before training.
EVAL_METRICS = ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_rewards/chosen",
                "eval_rewards/rejected", "eval_logps/chosen", "eval_logps/rejected", *PREFERENCE_METRICS)


def check_recipe(mixture: DatasetMixture, model_args: ModelConfig, training_args: DPOConfig) -> None:
    """Refuse what this stage cannot do before anything is loaded."""
    if not model_args.model_name_or_path:
        raise RecipeError("Set model_name_or_path: DPO starts from a (usually SFT) checkpoint, its reference.")
    if (model_args.load_in_4bit or model_args.load_in_8bit) and not model_args.use_peft:
        raise RecipeError("Quantized weights cannot be trained: with load_in_4bit or load_in_8bit, set "
                          "`use_peft: true` to train a LoRA adapter on them.")
    if model_args.load_in_4bit and (training_args.use_cpu or not torch.cuda.is_available()):
        raise RecipeError("load_in_4bit: 4-bit training needs a CUDA GPU with bitsandbytes, and this run has none; "
                          "set `load_in_4bit: false`.")
    if isinstance(mixture.eval_datasets, dict):
        raise RecipeError("dataset_mixture.eval_datasets: give one held-out set (a list); DPOTrainer reports rewards "
                          "and log-probabilities under one name for all sets.")


class PreferenceCallback(TrainerCallback):
    """At every evaluation, on the held-out pairs: how often the policy gives the chosen reply a higher
    log-probability than the rejected one (`eval_preference_accuracy`), and the mean difference of the two
    (`eval_logp_margin`, summed over each reply's tokens). Logged beside DPOTrainer's own metrics."""

    def __init__(self, trainer: DPOTrainer):
        self.trainer = trainer

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
        self.trainer.log({"eval_preference_accuracy": (differences > 0).float().mean().item(),
                          "eval_logp_margin": differences.mean().item()})


def main(argv=None):
    args, model_args, training_args = RecipeParser(ARGUMENTS).parse(argv)
    stage.start(args, training_args)
    mixture = DatasetMixture.from_recipe(args.dataset_mixture)
    check_declared_columns(mixture, DATASET_FORMAT)
    check_recipe(mixture, model_args, training_args)
    data, report = build_mixture(mixture, DATASET_FORMAT)
    stage.logger.info("Dataset mixture (%s pairs):\n%s", f"{report.total_examples:,}", report.to_markdown())
    tokenizer = load_tokenizer(args.tokenizer_name_or_path or model_args.model_name_or_path, args.trust_remote_code,
                               model_args.model_revision)
    held_out = data.get("test")
    peft_config = get_peft_config(model_args)

    if args.dry_run:
        keeps_reference = peft_config is None and not training_args.precompute_ref_log_probs
        print(fine_tuning_dry_run(model_args, training_args, tokenizer, peft_config, args.trust_remote_code,
                                  len(data["train"]), "pairs", sequences_per_example=2,
                                  keeps_reference=keeps_reference))
        return

    quantization_config = get_quantization_config(model_args)
    # `model_init_kwargs` go to from_pretrained here, since the models are loaded here, not by DPOTrainer.
    load_kwargs, training_args.model_init_kwargs = dict(training_args.model_init_kwargs or {}), None
    if quantization_config is not None:
        load_kwargs.update(quantization_config=quantization_config, device_map={"": training_args.local_process_index})

    def load_parent():
        return load_causal_lm(model_args.model_name_or_path, None, tokenizer, model_args.dtype,
                              model_args.attn_implementation, args.trust_remote_code, model_args.model_revision,
                              **load_kwargs)

    model = load_parent()
    # A frozen copy of the parent, unless the reference is the policy with its adapters disabled (LoRA) or is needed
    # only once, before training, to precompute its log-probabilities (DPOTrainer then uses the policy itself).
    ref_model = None
    if peft_config is None and not training_args.precompute_ref_log_probs:
        ref_model = load_parent().requires_grad_(False).eval()
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=held_out,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if held_out is not None:
        trainer.add_callback(PreferenceCallback(trainer))
    add_lm_eval_callback(trainer, args)
    trainable, parameters = (trainer.model.get_nb_trainable_parameters() if peft_config is not None
                             else (model.num_parameters(),) * 2)
    stage.logger.info("Policy: %s parameters, %s trained; reference: %s", format_count(parameters),
                      format_count(trainable), "the policy with adapters disabled" if peft_config is not None
                      else "precomputed log-probabilities" if ref_model is None else "a frozen copy")
    started = time.time()
    result = trainer.train(resume_from_checkpoint=stage.checkpoint_to_resume(training_args))
    summary = {
        "stage": "dpo",
        "final_train_loss": stage.last_logged(trainer, "loss"),
        "final_train_reward_accuracy": stage.last_logged(trainer, "rewards/accuracies"),
        # DPOTrainer counts the tokens of chosen and rejected sequences, padding excluded (again on resuming).
        "train_tokens_per_second": stage.last_logged(trainer, "num_tokens", 0) / result.metrics["train_runtime"],
        "train_steps_per_second": result.metrics["train_steps_per_second"],
        "wall_seconds": time.time() - started,
        "parameters": parameters,
        "trainable_parameters": trainable,
        "beta": training_args.beta,
        "loss_type": training_args.loss_type,
        "mixture": report.rows,
    }
    if held_out is not None:
        # TRL's metrics are averaged over evaluation batches: exact over pairs when the batch size divides the
        # number of held-out pairs.
        # Before training (eval_on_start): the parent, which is its own reference.
        summary.update(stage.evaluate_held_out(trainer, keep=lambda key: key in EVAL_METRICS))
        summary["eval_pairs"] = len(trainer.eval_dataset)
    if peft_config is not None and trainer.is_world_process_zero():
        # The adapter folder holds no model config; keep the stop tokens beside it for whoever loads it.
        trainer.model.generation_config.save_pretrained(training_args.output_dir)
    stage.finish(trainer, training_args, summary, args, model_args)


if __name__ == "__main__":
    stage.run(main)
