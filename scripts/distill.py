"""Distillation: train a smaller student to do what a larger teacher does, from prompts alone.

    accelerate launch scripts/distill.py --config recipes/tiny/distill_on_policy.yaml
    accelerate launch --config_file accelerate_configs/single_gpu.yaml scripts/distill.py \
        --config recipes/qwen3-0.6b/distill.yaml

`distill_mode` picks how the student learns:
- `on_policy`: the student answers each prompt, and the teacher scores every token of that answer; the loss is the
  generalized Jensen-Shannon divergence between their next-token distributions (`beta: 1.0` is reverse KL), with
  TRL's DistillationTrainer (Agarwal et al., 2024). The student learns where its own answers go wrong.
- `off_policy`: the teacher answers every prompt first, and the student is fine-tuned on those answers with TRL's
  SFTTrainer: sequence-level distillation (Kim & Rush, 2016), as open-r1 distils reasoning traces. The answers are
  kept in `teacher_generations.jsonl` in the output folder, and a resumed run reuses them.

The teacher (`teacher_model_name_or_path`) must share the student's vocabulary; the student (`model_name_or_path`)
is usually a smaller pretrained model, and it takes the teacher's tokenizer and chat template unless
`tokenizer_name_or_path` says otherwise. Held-out prompts with an `answer` column are scored before and after
(greedy accuracy, pass@k: llm_recipes/pass_at_k.py).
"""

import llm_recipes  # noqa: F401, I001  first of all: it keeps known library start-up noise out of the log
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from transformers import AutoConfig, TrainingArguments
from trl import DistillationConfig, DistillationTrainer, ModelConfig, SFTConfig, SFTTrainer, get_peft_config

from llm_recipes import preflight, stage
from llm_recipes.atomic_files import write_jsonl_atomic
from llm_recipes.model import load_causal_lm
from llm_recipes.pass_at_k import PassAtKArguments, add_pass_at_k_callback, generate_replies
from llm_recipes.recipe import RecipeError

MODES = ("on_policy", "off_policy")
TEACHER_GENERATIONS = "teacher_generations.jsonl"


@dataclass
class DistillArguments(stage.StageArguments):
    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "The teacher: a folder or Hub id, with the student's vocabulary."})
    teacher_model_revision: str | None = field(default=None, metadata={"help": "The teacher's Hub revision."})
    distill_mode: str = field(default="on_policy", metadata={
        "help": "on_policy: the teacher scores the student's own answers (DistillationTrainer); off_policy: the "
                "student is fine-tuned on the teacher's answers (SFTTrainer)."})
    teacher_temperature: float = field(default=0.0, metadata={
        "help": "off_policy: 0 answers greedily (the teacher's best answer); above 0 samples at that temperature."})
    teacher_batch_size: int = field(default=64, metadata={"help": "off_policy: prompts per teacher batch."})


# What a recipe of this stage may hold, and the columns its datasets need (the recipe test reads both).
ARGUMENTS = (DistillArguments, PassAtKArguments, ModelConfig, DistillationConfig)
DATASET_FORMAT = "prompt"
SPEC = stage.StageSpec("distill", ARGUMENTS, DATASET_FORMAT, examples="prompts", named_eval_sets=False,
                       starts_from="a pretrained student, smaller than the teacher")
WATCHED = ("eval_loss", "eval_greedy_accuracy", "eval_entropy")


def check_recipe(run: stage.Run) -> None:
    args = run.args
    if args.distill_mode not in MODES:
        raise RecipeError(f"distill_mode: '{args.distill_mode}' is not one of {', '.join(MODES)}.")
    if not args.teacher_model_name_or_path:
        raise RecipeError("Set teacher_model_name_or_path: the model the student learns from.")
    preflight.check_model_source(args.teacher_model_name_or_path, "teacher_model_name_or_path",
                                 args.teacher_model_revision)
    if args.teacher_temperature < 0:
        raise RecipeError(f"teacher_temperature: {args.teacher_temperature} is below 0.")
    # The student speaks the teacher's chat template, so the teacher's tokenizer is the one both read.
    args.tokenizer_name_or_path = args.tokenizer_name_or_path or args.teacher_model_name_or_path


def check_vocabularies(run: stage.Run) -> None:
    """Both models score the same token ids: a teacher with another vocabulary is refused before any weights load
    (TRL's experimental GOLDTrainer distils across tokenizers; this stage does not)."""
    args, model_args = run.args, run.model_args
    sizes = {}
    for key, name, revision in (("model_name_or_path", model_args.model_name_or_path, model_args.model_revision),
                                ("teacher_model_name_or_path", args.teacher_model_name_or_path,
                                 args.teacher_model_revision)):
        config = AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=args.trust_remote_code)
        sizes[key] = config.get_text_config().vocab_size
    if len(set(sizes.values())) > 1 or len(run.tokenizer) > sizes["model_name_or_path"]:
        raise RecipeError(f"The student and teacher must share one vocabulary: vocab_size {sizes}, tokenizer "
                          f"{len(run.tokenizer)} tokens. Distil into a student of the teacher's tokenizer.")


def teacher_answers(teacher, tokenizer, prompts: Dataset, args, max_new_tokens: int, path: Path) -> Dataset:
    """The teacher's answer to every prompt, as prompt/completion rows; read back from `path` when a cut-off run
    wrote them already, so that a resumed run trains on the same answers."""
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        if [row["prompt"] for row in rows] == prompts["prompt"]:
            stage.logger.info("Reusing the teacher's %s answers in %s", f"{len(rows):,}", path)
            return Dataset.from_list(rows)
    sample = args.teacher_temperature > 0
    replies = generate_replies(teacher, tokenizer, prompts["prompt"], sample, args.teacher_temperature or 1.0,
                               max_new_tokens, args.teacher_batch_size)
    conversational = isinstance(prompts[0]["prompt"], list)
    rows = [{"prompt": prompt, "completion": [{"role": "assistant", "content": reply}] if conversational else reply}
            for prompt, reply in zip(prompts["prompt"], replies)]
    write_jsonl_atomic(path, rows)
    return Dataset.from_list(rows)


def sft_config_from(training_args: DistillationConfig) -> SFTConfig:
    """The same training settings for SFTTrainer (off_policy): every TrainingArguments field, and the completion
    (the teacher's answer) as the only tokens trained on."""
    shared = {f.name: getattr(training_args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
    return SFTConfig(**shared, completion_only_loss=True, max_length=None, dataset_num_proc=None)


def main(argv=None):
    run = stage.prepare(SPEC, argv, check_recipe)
    args, model_args, training_args = run.args, run.model_args, run.training_args
    check_vocabularies(run)
    if args.dry_run:
        print(f"student:                 {model_args.model_name_or_path}")
        print(f"teacher:                 {args.teacher_model_name_or_path}")
        print(f"mode:                    {args.distill_mode}, {len(run.data['train']):,} prompts")
        return

    teacher = load_causal_lm(dataclasses.replace(model_args, model_name_or_path=args.teacher_model_name_or_path,
                                                 model_revision=args.teacher_model_revision),
                             run.tokenizer, args.trust_remote_code).eval()
    teacher_parameters = sum(p.numel() for p in teacher.parameters())
    student = load_causal_lm(model_args, run.tokenizer, args.trust_remote_code)
    # The student ends its turn where the teacher does (the teacher's end-of-turn token), in training and after.
    student.generation_config.eos_token_id = teacher.generation_config.eos_token_id
    student.generation_config.pad_token_id = run.tokenizer.pad_token_id
    max_new_tokens = training_args.max_completion_length
    if args.distill_mode == "on_policy":
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=training_args,
                                      train_dataset=run.data["train"], eval_dataset=run.eval_dataset,
                                      processing_class=run.tokenizer, peft_config=get_peft_config(model_args))
    else:
        output = Path(training_args.output_dir)
        train = teacher_answers(teacher, run.tokenizer, run.data["train"], args, max_new_tokens,
                                output / TEACHER_GENERATIONS)
        held_out = run.eval_dataset
        eval_answers = (teacher_answers(teacher, run.tokenizer, held_out, args, max_new_tokens,
                                        output / f"eval_{TEACHER_GENERATIONS}") if held_out is not None else None)
        del teacher  # only its answers are needed from here on
        trainer = SFTTrainer(model=student, args=sft_config_from(training_args), train_dataset=train,
                             eval_dataset=eval_answers, processing_class=run.tokenizer,
                             peft_config=get_peft_config(model_args))
    add_pass_at_k_callback(trainer, run.of(PassAtKArguments), run.eval_dataset, training_args.temperature,
                           max_new_tokens, training_args.seed)
    stage.train(trainer, run, keep=lambda key: key in WATCHED or key.startswith("eval_pass@"),
                summary=lambda result, evaluated: {
                    "distill_mode": args.distill_mode, "teacher": args.teacher_model_name_or_path,
                    "teacher_parameters": teacher_parameters,
                    "seconds_per_step": result.metrics["train_runtime"] / max(result.global_step, 1)})


if __name__ == "__main__":
    stage.run(main)
