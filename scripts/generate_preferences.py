"""AI feedback (RLAIF, Constitutional AI): sample k answers per prompt from a checkpoint, let a judge rank them, and
write prompt/chosen/rejected pairs in TRL's preference format, ready for DPO on the model's own samples.

    python scripts/generate_preferences.py --config recipes/tiny/generate_preferences.yaml

Judges (`judge`):
- `reward_funcs`: verifiable rewards of llm_recipes/rewards.py, weighed by `reward_weights` (the `answer` column
  reaches them as in GRPO); the best-scored sample is chosen, the worst rejected;
- `reward_model`: a sequence-classification reward model (`reward_model_name_or_path`) scores each sample;
- `constitution`: a judge model (`judge_model_name_or_path`) critiques one sample against a principle of the
  written constitution (`constitution_path`, one principle per paragraph) and revises it; the revision is chosen
  and the original rejected (Bai et al., 2022). `constitution_rules` names rules that judge instead of a model
  (`module:function`, given the principles; the tiny world's are `llm_recipes.tiny_world:constitution_rules`).
Pairs whose scores differ by less than `min_margin` are skipped: a tie teaches nothing.

`output_format: revisions` writes Constitutional AI's supervised stage instead (SL-CAI): one SFT conversation per
prompt, the prompt and the revised reply (or the sample itself where it broke no principle), with the critique and
the original kept beside it (`critique`, `original`); SFT on them comes before the pairs (RL-CAI).
"""

import llm_recipes  # noqa: F401, I001  first of all: it keeps known library start-up noise out of the log
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from llm_recipes import stage
from llm_recipes.atomic_files import write_jsonl_atomic
from llm_recipes.data import DatasetMixture, build_mixture, check_declared_columns
from llm_recipes.model import load_tokenizer
from llm_recipes.recipe import RecipeError, RecipeParser, repo_path
from llm_recipes.rewards import check_reward_names, imported_function, reward_funcs_from_recipe

JUDGES = ("reward_funcs", "reward_model", "constitution")
OUTPUT_FORMATS = ("pairs", "revisions")


@dataclass
class PreferenceArguments:
    model_name_or_path: str = field(default=None, metadata={"help": "The checkpoint whose answers are sampled."})
    output_dir: str = field(default=None, metadata={"help": "Folder for train.jsonl (pairs) and the stage summary."})
    dataset_mixture: dict | None = field(
        default=None, metadata={"help": "Prompts (conversational `prompt` column), with the reference columns the "
                                "judge reads (e.g. `answer`) listed in `columns:`."})
    judge: str = field(default="reward_funcs", metadata={"help": f"Who ranks the samples: {', '.join(JUDGES)}."})
    reward_funcs: list[str] = field(default_factory=lambda: ["answer_accuracy"],
                                    metadata={"help": "With judge reward_funcs: functions of llm_recipes/rewards.py."})
    reward_weights: list[float] | None = field(default=None, metadata={"help": "One weight per reward function."})
    reward_model_name_or_path: str | None = field(default=None, metadata={"help": "With judge reward_model."})
    judge_model_name_or_path: str | None = field(default=None, metadata={"help": "With judge constitution."})
    constitution_path: str | None = field(
        default=None, metadata={"help": "With judge constitution: a text file of principles, one per paragraph."})
    constitution_rules: str | None = field(
        default=None, metadata={"help": "With judge constitution, instead of a judge model: rules that critique and "
                                "revise (`module:function`, called with the principles)."})
    output_format: str = field(default="pairs", metadata={
        "help": "pairs: prompt/chosen/rejected for DPO; revisions: SFT conversations of the revised replies "
                "(judge constitution)."})
    num_samples: int = field(default=4, metadata={"help": "Answers sampled per prompt (k)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest sampled answer, in tokens."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per generation batch."})
    min_margin: float = field(default=1e-6, metadata={"help": "Skip a pair whose two scores differ by less."})
    dtype: str = field(default="float32", metadata={"help": "Weights dtype of the sampled and judging models."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run modelling code shipped with a checkpoint."})


ARGUMENTS = (PreferenceArguments,)
DATASET_FORMAT = "prompt"


def check_arguments(args: PreferenceArguments) -> None:
    for key in ("model_name_or_path", "output_dir"):
        if not getattr(args, key):
            raise RecipeError(f"{key} is required.")
    if args.judge not in JUDGES:
        raise RecipeError(f"judge: '{args.judge}' is not one of {', '.join(JUDGES)}.")
    if args.output_format not in OUTPUT_FORMATS:
        raise RecipeError(f"output_format: '{args.output_format}' is not one of {', '.join(OUTPUT_FORMATS)}.")
    if args.output_format == "revisions" and args.judge != "constitution":
        raise RecipeError("output_format: revisions are written by the constitution judge; set judge: constitution.")
    if args.num_samples < 2 and args.judge != "constitution":
        raise RecipeError("num_samples: a pair needs at least 2 samples per prompt.")
    needed = {"reward_model": ["reward_model_name_or_path"],
              "constitution": ["constitution_path"]}.get(args.judge, [])
    for key in needed:
        if not getattr(args, key):
            raise RecipeError(f"judge '{args.judge}' needs `{key}`.")
    if args.judge == "reward_funcs":
        check_reward_names(args.reward_funcs, args.reward_weights)
    if args.constitution_path and not Path(repo_path(args.constitution_path)).is_file():
        raise RecipeError(f"constitution_path: no file {args.constitution_path}.")
    if args.judge == "constitution" and bool(args.judge_model_name_or_path) == bool(args.constitution_rules):
        raise RecipeError("judge constitution: set one of judge_model_name_or_path (a model critiques and revises) "
                          "and constitution_rules (rules do).")


def read_principles(path: str) -> list[str]:
    """A constitution's principles: its paragraphs, less comments."""
    text = Path(repo_path(path)).read_text()
    return [p.strip() for p in text.split("\n\n") if p.strip() and not p.lstrip().startswith("#")]


def rules_critic(name: str, principles: list[str]):
    """The critic a `constitution_rules` entry names, built on the principles; what it misses is said now."""
    factory = imported_function(name, key="constitution_rules")
    try:
        return factory(principles)
    except ValueError as e:
        raise RecipeError(f"constitution_rules: {name}: {e}") from e


@torch.no_grad()
def sample_answers(model, tokenizer, prompts: list[list[dict]], args) -> list[list[str]]:
    """`num_samples` sampled replies per conversational prompt, decoded without special tokens."""
    tokenizer.padding_side = "left"  # generation continues the prompt; padding goes before it
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    output = model.generate(**batch, do_sample=True, temperature=args.temperature, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, num_return_sequences=args.num_samples,
                            pad_token_id=tokenizer.pad_token_id)
    replies = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return [replies[i * args.num_samples:(i + 1) * args.num_samples] for i in range(len(prompts))]


@torch.no_grad()
def reward_model_scores(reward_model, tokenizer, prompt: list[dict], replies: list[str]) -> list[float]:
    texts = [tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": r}], tokenize=False)
             for r in replies]
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(reward_model.device)
    return reward_model(**batch).logits[:, 0].float().tolist()


def function_scores(funcs, weights, prompt, replies, row: dict) -> list[float]:
    completions = [[{"role": "assistant", "content": r}] for r in replies]
    columns = {k: [v] * len(replies) for k, v in row.items() if k != "prompt"}
    total = [0.0] * len(replies)
    for func, weight in zip(funcs, weights):
        for i, score in enumerate(func(completions=completions, prompts=[prompt] * len(replies), **columns)):
            total[i] += weight * (score or 0.0)
    return total


@torch.no_grad()
def critique_and_revise(judge, tokenizer, prompt, reply: str, principle: str, args) -> tuple[str, str]:
    """One Constitutional AI step: the judge critiques `reply` against `principle`, then rewrites it; (critique,
    revision)."""
    def ask(messages):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(judge.device)
        out = judge.generate(**ids, do_sample=False, max_new_tokens=args.max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id)
        return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    conversation = prompt + [{"role": "assistant", "content": reply}]
    critique_request = {"role": "user", "content": f"Critique your last answer against this principle: {principle}"}
    critique = ask(conversation + [critique_request])
    revision_request = {"role": "user", "content": "Rewrite your answer so that it follows the principle. "
                        "Give only the new answer."}
    return critique, ask(conversation + [critique_request, {"role": "assistant", "content": critique},
                                         revision_request])


def main(argv=None):
    (args,) = RecipeParser(ARGUMENTS).parse(argv)
    stage.setup_logging()
    check_arguments(args)
    mixture = DatasetMixture.from_recipe(args.dataset_mixture)
    check_declared_columns(mixture, DATASET_FORMAT)
    data, report = build_mixture(mixture, DATASET_FORMAT)
    if not isinstance(data["train"][0]["prompt"], list):
        raise RecipeError("dataset_mixture: prompts must be conversational (a list of messages) to be asked "
                          "through the chat template.")
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    principles = read_principles(args.constitution_path) if args.judge == "constitution" else None
    critic = rules_critic(args.constitution_rules, principles) if args.constitution_rules else None
    tokenizer = load_tokenizer(args.model_name_or_path, args.trust_remote_code)
    dtype = getattr(torch, args.dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, dtype=dtype, use_safetensors=True,
                                                 trust_remote_code=args.trust_remote_code).to(device).eval()
    reward_model = funcs = weights = None
    if args.judge == "reward_funcs":
        funcs, weights = reward_funcs_from_recipe(args.reward_funcs, args.reward_weights, args.max_new_tokens)
    elif args.judge == "reward_model":
        reward_model = AutoModelForSequenceClassification.from_pretrained(
            args.reward_model_name_or_path, dtype=dtype, use_safetensors=True).to(device).eval()
    elif critic is None:
        judge_model = AutoModelForCausalLM.from_pretrained(
            args.judge_model_name_or_path, dtype=dtype, use_safetensors=True).to(device).eval()

        def critic(prompt, reply, row):  # a model finds fault with every reply it is shown, against one principle
            return critique_and_revise(judge_model, tokenizer, prompt, reply, random.choice(principles), args)

    judges = dict(funcs=funcs, weights=weights, reward_model=reward_model, critic=critic)
    started, summary = time.time(), {"stage": "generate_preferences", "judge": args.judge}
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    # Held-out prompts (`eval_datasets`) give held-out pairs of the same kind (test.jsonl, or <name>.jsonl), for a
    # stage that trains on train.jsonl to measure itself on.
    for split, prompts in data.items():
        suffix = "" if split == "train" else f"_{split}"
        if args.output_format == "revisions":
            conversations = make_revisions(model, tokenizer, prompts, critic, args)
            write_jsonl_atomic(output / f"{split}.jsonl", conversations)
            summary.update({f"prompts{suffix}": len(prompts),
                            f"revised{suffix}": sum(row["critique"] is not None for row in conversations)})
            continue
        pairs, skipped = make_pairs(model, tokenizer, prompts, judges, args, split)
        write_jsonl_atomic(output / f"{split}.jsonl", pairs)
        summary.update({f"prompts{suffix}": len(prompts), f"pairs{suffix}": len(pairs),
                        f"ties_skipped{suffix}": skipped,
                        f"mean_score_chosen{suffix}": sum(p["score_chosen"] for p in pairs) / len(pairs),
                        f"mean_score_rejected{suffix}": sum(p["score_rejected"] for p in pairs) / len(pairs)})
    summary["wall_seconds"] = time.time() - started
    summary["samples_per_second"] = sum(map(len, data.values())) * args.num_samples / summary["wall_seconds"]
    stage.logger.info("Preference pairs: %s", json.dumps(summary))
    stage.mark_complete(output, summary)


def judged_pair(row: dict, replies: list[str], judges: dict, tokenizer, args) -> tuple[str, str, list[float]]:
    """(chosen, rejected, [their scores]) among one prompt's sampled replies."""
    if args.judge == "constitution":
        verdict = judges["critic"](row["prompt"], replies[0], row)
        return (verdict[1], replies[0], [1.0, 0.0]) if verdict else (replies[0], replies[0], [0.0, 0.0])
    scores = (function_scores(judges["funcs"], judges["weights"], row["prompt"], replies, row) if judges["funcs"]
              else reward_model_scores(judges["reward_model"], tokenizer, row["prompt"], replies))
    order = sorted(range(len(replies)), key=lambda i: scores[i])
    return replies[order[-1]], replies[order[0]], [scores[order[-1]], scores[order[0]]]


def make_revisions(model, tokenizer, prompts, critic, args) -> list[dict]:
    """SL-CAI: per prompt, one sampled reply, critiqued and revised where it breaks a principle, as a conversation."""
    conversations = []
    for start in range(0, len(prompts), args.batch_size):
        rows = prompts.select(range(start, min(start + args.batch_size, len(prompts))))
        for row, replies in zip(rows, sample_answers(model, tokenizer, rows["prompt"], args)):
            critique, revision = critic(row["prompt"], replies[0], row) or (None, replies[0])
            conversations.append({"messages": row["prompt"] + [{"role": "assistant", "content": revision}],
                                  "critique": critique, "original": replies[0]})
        stage.logger.info("revisions: %s/%s prompts, %s revised", len(conversations), len(prompts),
                          sum(row["critique"] is not None for row in conversations))
    return conversations


def make_pairs(model, tokenizer, prompts, judges: dict, args, split: str) -> tuple[list[dict], int]:
    """One pair per prompt whose best and worst samples differ by at least `min_margin`; and how many tied."""
    pairs, skipped = [], 0
    for start in range(0, len(prompts), args.batch_size):
        rows = prompts.select(range(start, min(start + args.batch_size, len(prompts))))
        for row, replies in zip(rows, sample_answers(model, tokenizer, rows["prompt"], args)):
            best, worst, scores = judged_pair(row, replies, judges, tokenizer, args)
            if scores[0] - scores[1] < args.min_margin or best == worst:
                skipped += 1
                continue
            pairs.append({"prompt": row["prompt"], "chosen": [{"role": "assistant", "content": best}],
                          "rejected": [{"role": "assistant", "content": worst}],
                          "score_chosen": scores[0], "score_rejected": scores[1]})
        stage.logger.info("%s: %s/%s prompts, %s pairs, %s ties skipped", split,
                          min(start + args.batch_size, len(prompts)), len(prompts), len(pairs), skipped)
    if not pairs:
        raise RecipeError(f"No {split} pair was written: every prompt's samples tied. Raise temperature or "
                          "num_samples, or use a judge that tells the answers apart.")
    return pairs, skipped


if __name__ == "__main__":
    stage.run(main)
