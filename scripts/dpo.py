"""Direct preference optimization: make the SFT model prefer the chosen reply to the rejected one, with TRL's
DPOTrainer.

    accelerate launch scripts/dpo.py --config recipes/tiny/dpo.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml scripts/dpo.py \
        --config recipes/qwen3-0.6b/dpo.yaml

DPO needs no reward model: the policy's implicit reward is β·(log π(y|x) − log π_ref(y|x)), and the loss
(`loss_type`: sigmoid, ipo, hinge, ...) widens the reward margin of chosen over rejected, with `beta` keeping the
policy near the reference: a frozen copy of the starting checkpoint, or with `use_peft: true` the policy with its
adapters disabled, or with `precompute_ref_log_probs: true` log-probabilities computed once before training. Data are
preference pairs (TRL's format). On the held-out pairs the summary gives, before training (the parent) and after,
TRL's reward accuracy and margin (0 for the parent by construction) and the policy's own preference
(`eval_preference_accuracy`, `eval_logp_margin`: llm_recipes/preference_eval.py), over all held-out pairs and, for
named held-out sets, over each (`eval_<name>_preference_accuracy`).
"""

import llm_recipes  # noqa: F401, I001  first of all: it keeps known library start-up noise out of the log
import datasets
from trl import DPOConfig, DPOTrainer, ModelConfig, get_peft_config

from llm_recipes import stage
from llm_recipes.data import align_features
from llm_recipes.model import fine_tuning_dry_run, load_causal_lm, quantized_loading
from llm_recipes.preference_eval import PreferenceCallback

# What a recipe of this stage may hold, and the columns its datasets need (the recipe test reads both).
ARGUMENTS = (stage.StageArguments, ModelConfig, DPOConfig)
DATASET_FORMAT = "preference"
SPEC = stage.StageSpec("dpo", ARGUMENTS, DATASET_FORMAT, examples="pairs",
                       starts_from="a (usually SFT) checkpoint, its reference", quantized_base=True)
# Held-out measurements of the stage summary, as DPOTrainer and PreferenceCallback name them (and each named
# held-out set's `eval_<name>_preference_accuracy`); each also before.
EVAL_METRICS = ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_rewards/chosen",
                "eval_rewards/rejected", "eval_logps/chosen", "eval_logps/rejected", "eval_preference_accuracy",
                "eval_logp_margin")


def is_summarised(key: str) -> bool:
    return key in EVAL_METRICS or (key.startswith("eval_") and key.endswith("_preference_accuracy"))


def main(argv=None):
    run = stage.prepare(SPEC, argv)
    model_args, training_args, named = run.model_args, run.training_args, run.held_out
    # Named held-out sets are scored together by DPOTrainer, and PreferenceCallback also scores each one apart.
    held_out = datasets.concatenate_datasets(align_features(list(named.values()))) if named else None
    peft_config = get_peft_config(model_args)
    # A frozen copy of the parent, unless the reference is the policy with its adapters disabled (LoRA) or is needed
    # only once, before training, to precompute its log-probabilities (DPOTrainer then uses the policy itself).
    keeps_reference = peft_config is None and not training_args.precompute_ref_log_probs
    if run.args.dry_run:
        print(fine_tuning_dry_run(model_args, training_args, run.tokenizer, peft_config, run.args.trust_remote_code,
                                  len(run.data["train"]), "pairs", sequences_per_example=2,
                                  keeps_reference=keeps_reference))
        return

    # `model_init_kwargs` go to from_pretrained here, since the models are loaded here, not by DPOTrainer.
    load_kwargs, training_args.model_init_kwargs = dict(training_args.model_init_kwargs or {}), None
    load_kwargs.update(quantized_loading(model_args, training_args))
    model = load_causal_lm(model_args, run.tokenizer, run.args.trust_remote_code, **load_kwargs)
    ref_model = (load_causal_lm(model_args, run.tokenizer, run.args.trust_remote_code, **load_kwargs)
                 .requires_grad_(False).eval() if keeps_reference else None)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=training_args, train_dataset=run.data["train"],
                         eval_dataset=held_out, processing_class=run.tokenizer, peft_config=peft_config)
    if held_out is not None:
        sizes = {name: len(split) for name, split in named.items()} if len(named) > 1 else None
        trainer.add_callback(PreferenceCallback(trainer, sizes))
    stage.logger.info("Reference: %s", "the policy with adapters disabled" if peft_config is not None
                      else "a frozen copy" if keeps_reference else "precomputed log-probabilities")
    # TRL's metrics are averaged over evaluation batches: exact over pairs when the batch size divides the number of
    # held-out pairs.
    stage.train(trainer, run, keep=is_summarised, summary=lambda result, evaluated: {
        "final_train_reward_accuracy": stage.last_logged(trainer, "rewards/accuracies"),
        "beta": training_args.beta, "loss_type": training_args.loss_type,
        **({"eval_pairs": len(trainer.eval_dataset)} if held_out is not None else {}),
        **({"eval_pairs_per_set": {name: len(split) for name, split in named.items()}} if len(named) > 1 else {})})


if __name__ == "__main__":
    stage.run(main)
