"""Reward modeling: train a model to score a chosen reply above a rejected one, with TRL's RewardTrainer.

    accelerate launch scripts/reward.py --config recipes/tiny/reward.yaml
    accelerate launch --config_file accelerate_configs/single_gpu.yaml scripts/reward.py \
        --config recipes/qwen3-0.6b/reward.yaml

The causal LM checkpoint `model_name_or_path` (usually the SFT model) is loaded as
AutoModelForSequenceClassification with one label: its LM head is dropped and a new linear `score` head reads the
last non-padding token, so the tokenizer's pad token becomes the config's `pad_token_id`. The loss is the
Bradley-Terry pairwise loss -log σ(r(chosen) - r(rejected)), or with a `margin` column (select it with `columns:`),
-log σ(r(chosen) - r(rejected) - margin).

Data are preference pairs (TRL's format): `prompt`, `chosen`, `rejected`, conversational (lists of messages) or plain
text; or `chosen`/`rejected` alone with the prompt inside them (implicit prompt). `use_peft: true` trains LoRA
adapters and the score head (`lora_task_type: SEQ_CLS`). The held-out pairs are scored before training (the untrained
head, `eval_on_start`) and after: pairwise accuracy (how often chosen scores above rejected) and the mean margin.
"""

import json
import time

import datasets
import torch
from transformers import TrainerCallback
from trl import ModelConfig, RewardConfig, RewardTrainer, get_peft_config, get_quantization_config

from llm_recipes import stage
from llm_recipes.data import DatasetMixture, align_features, build_mixture, check_declared_columns
from llm_recipes.model import fine_tuning_dry_run, format_count, load_tokenizer
from llm_recipes.recipe import RecipeError, RecipeParser

# What a recipe of this stage may hold, and the columns its datasets need (the recipe test reads both).
ARGUMENTS = (stage.StageArguments, ModelConfig, RewardConfig)
DATASET_FORMAT = "preference"
# Held-out measurements of the stage summary, as RewardTrainer names them, and each named held-out set's accuracy
# (PairAccuracyCallback); each also before training.
EVAL_METRICS = ("eval_loss", "eval_accuracy", "eval_margin", "eval_mean_reward")


def is_summarised(key: str) -> bool:
    return key in EVAL_METRICS or (key.startswith("eval_") and key.endswith("_pair_accuracy"))


class PairAccuracyCallback(TrainerCallback):
    """At every evaluation, how often the reward model scores the chosen reply above the rejected one in each named
    held-out set (`eval_<name>_pair_accuracy`): RewardTrainer reports all held-out pairs under one name."""

    def __init__(self, trainer, named: dict, max_length: int | None, batch_size: int):
        self.trainer, self.batch_size = trainer, batch_size
        tokenizer = trainer.processing_class
        self.sets = {}
        for name, pairs in named.items():
            texts = {side: [self.render(tokenizer, row, side) for row in pairs] for side in ("chosen", "rejected")}
            self.sets[name] = {side: tokenizer(batch, truncation=max_length is not None, max_length=max_length,
                                               add_special_tokens=False)["input_ids"] for side, batch in texts.items()}

    @staticmethod
    def render(tokenizer, row: dict, side: str) -> str:
        """A pair's prompt and reply as RewardTrainer renders it: through the chat template (with the row's tools)
        for conversations, concatenated for plain text."""
        if isinstance(row[side], str):
            return row.get("prompt", "") + row[side]
        tools = json.loads(row["tools"]) if isinstance(row.get("tools"), str) else row.get("tools")
        return tokenizer.apply_chat_template(row.get("prompt", []) + row[side], tools=tools, tokenize=False)

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


def check_recipe(args, mixture: DatasetMixture, model_args: ModelConfig) -> None:
    """Refuse what this stage cannot do before anything is loaded."""
    if not model_args.model_name_or_path:
        raise RecipeError("Set model_name_or_path: a reward model starts from a pretrained (usually SFT) checkpoint.")
    if (model_args.load_in_4bit or model_args.load_in_8bit) and not model_args.use_peft:
        raise RecipeError("Quantized weights cannot be trained: with load_in_4bit or load_in_8bit, set "
                          "`use_peft: true` to train LoRA adapters and the score head on them.")
    if model_args.use_peft and model_args.lora_task_type != "SEQ_CLS":
        raise RecipeError(f"lora_task_type: a LoRA reward model must train and save its new score head; set "
                          f"`lora_task_type: SEQ_CLS` (got {model_args.lora_task_type!r}).")
    if args.lm_eval_tasks:
        raise RecipeError("lm_eval_tasks: a reward model scores text and generates none; evaluate the policy stages "
                          "(SFT, DPO, GRPO) with lm-eval instead.")


def main(argv=None):
    args, model_args, training_args = RecipeParser(ARGUMENTS).parse(argv)
    stage.start(args, training_args)
    mixture = DatasetMixture.from_recipe(args.dataset_mixture)
    check_declared_columns(mixture, DATASET_FORMAT)
    check_recipe(args, mixture, model_args)
    data, report = build_mixture(mixture, DATASET_FORMAT)
    stage.logger.info("Dataset mixture (%s pairs):\n%s", f"{report.total_examples:,}", report.to_markdown())
    tokenizer = load_tokenizer(args.tokenizer_name_or_path or model_args.model_name_or_path, args.trust_remote_code,
                               model_args.model_revision)
    # Named held-out sets are scored together by RewardTrainer and one by one by PairAccuracyCallback.
    named = {name: split for name, split in data.items() if name != "train"}
    held_out = datasets.concatenate_datasets(align_features(list(named.values()))) if named else None
    peft_config = get_peft_config(model_args)

    if args.dry_run:
        print(fine_tuning_dry_run(model_args, training_args, tokenizer, peft_config, args.trust_remote_code,
                                  len(data["train"]), "pairs", sequences_per_example=2))
        return

    # RewardTrainer loads the checkpoint as a one-label sequence classifier (a new score head, the LM head dropped).
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision, "dtype": model_args.dtype,
        "attn_implementation": model_args.attn_implementation, "trust_remote_code": args.trust_remote_code,
        "use_safetensors": True, **(training_args.model_init_kwargs or {}),
    }
    trainer = RewardTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=held_out,
        processing_class=tokenizer,
        quantization_config=get_quantization_config(model_args),
        peft_config=peft_config,
    )
    if len(named) > 1:
        trainer.add_callback(PairAccuracyCallback(trainer, named, training_args.max_length,
                                                  training_args.per_device_eval_batch_size))
    trainable, parameters = (trainer.model.get_nb_trainable_parameters() if peft_config is not None
                             else (trainer.model.num_parameters(),) * 2)
    stage.logger.info("Reward model: %s parameters, %s trained", format_count(parameters), format_count(trainable))
    started = time.time()
    result = trainer.train(resume_from_checkpoint=stage.checkpoint_to_resume(training_args))
    summary = {
        "stage": "reward",
        "final_train_loss": stage.last_logged(trainer, "loss"),
        "final_train_accuracy": stage.last_logged(trainer, "accuracy"),
        # RewardTrainer counts the tokens of chosen and rejected sequences, padding excluded (again on resuming).
        "train_tokens_per_second": stage.last_logged(trainer, "num_tokens", 0) / result.metrics["train_runtime"],
        "train_steps_per_second": result.metrics["train_steps_per_second"],
        "wall_seconds": time.time() - started,
        "parameters": parameters,
        "trainable_parameters": trainable,
        "mixture": report.rows,
    }
    if held_out is not None:
        # Accuracy and margin are averaged over evaluation batches: exact over pairs when the batch size divides
        # the number of held-out pairs.
        # Before training (eval_on_start): the untrained score head.
        summary.update(stage.evaluate_held_out(trainer, keep=is_summarised))
        summary["eval_pairs"] = {name: len(split) for name, split in named.items()}
    stage.finish(trainer, training_args, summary, args, model_args)


if __name__ == "__main__":
    stage.run(main)
