"""A deterministic synthetic "tiny world": every data set the recipes need, generated on CPU in seconds.

Its skill is arithmetic worked digit by digit in a think block (arithmetic.py), in two tiers: two-digit sums,
differences and one-step word problems, which SFT teaches, and three-digit and two-step problems, where RL has
room. Around it: web pages with planted defects for data preparation (web.py), a domain of worked solutions for
continued pretraining (domain.py), long documents for context extension, conversations, tool calls, preference
pairs and RL prompts (chats.py), the safety line (safety.py), and the held-out eval sets (evals.py).

Held-out discipline: a seeded `heldout_fraction` of operand triples is held out of every training file, except in the
planted "contaminated" web pages that data prep must remove. Test splits and eval/ use held-out triples only;
`eval/heldout_pairs.jsonl` lists the two-digit ones.

Usage: `generate_tiny_world("runs/tiny_world", TinyWorldConfig(seed=0))`.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llm_recipes.atomic_files import write_atomically
from llm_recipes.tiny_world.arithmetic import OperandPairs
from llm_recipes.tiny_world.chats import (
    build_preferences,
    build_rl,
    build_rl_safety,
    build_sft,
    build_tools,
    tool_call_text,
)
from llm_recipes.tiny_world.content_farm import build_web_more
from llm_recipes.tiny_world.domain import build_domain
from llm_recipes.tiny_world.evals import build_eval, build_long
from llm_recipes.tiny_world.safety import constitution_rules, is_refusal, safety_line
from llm_recipes.tiny_world.web import build_web, build_web_heldout

__all__ = ["TinyWorldConfig", "constitution_rules", "generate_tiny_world", "is_refusal", "safety_line"]


@dataclass
class TinyWorldConfig:
    """Seed and sizes of the tiny world. Defaults give ~3 MB of web text and the row counts in the README."""

    seed: int = field(default=0, metadata={"help": "Seed of every random choice; same seed, byte-identical files."})
    scale: float = field(default=1.0, metadata={"help": "Multiplies every count below; 0.05 makes a test world."})
    heldout_fraction: float = field(default=0.1, metadata={"help": "Share of (a, b, op) triples kept out of training."})
    web_pages: int = field(default=2900, metadata={"help": "Pages in raw/web.jsonl, planted defects included."})
    exact_duplicates: int = field(default=100, metadata={"help": "Web pages that copy a clean page's text exactly."})
    near_duplicates: int = field(default=100, metadata={"help": "Web pages copying a clean page with small edits."})
    spam_pages: int = field(default=150, metadata={"help": "Boilerplate and spam pages for quality filters."})
    pii_pages: int = field(default=60, metadata={"help": "Clean pages with e-mails, phone numbers or IPs to redact."})
    contaminated_pages: int = field(default=20, metadata={"help": "Pages quoting eval questions and answers."})
    web_heldout_pages: int = field(default=200, metadata={"help": "Clean pages in raw/web_heldout.jsonl (perplexity)."})
    web_more_pages: int = field(default=1000, metadata={
        "help": "Pages in raw/web_more.jsonl, a second crawl: first-crawl pages again, and content farms."})
    content_farm_pages: int = field(default=300, metadata={
        "help": "Content-farm pages among them: fluent and empty, kept by heuristic filters (content_farm.py)."})
    domain_train_docs: int = field(default=4000, metadata={"help": "Worked solutions and ledgers, domain/train.jsonl."})
    domain_heldout_docs: int = field(default=400, metadata={"help": "Documents in domain/heldout.jsonl."})
    domain_rl_tier_share: float = field(default=0.3, metadata={
        "help": "Share of the domain's worked solutions from the RL tier (three-digit, two-step)."})
    sft_train: int = field(default=4000, metadata={"help": "Conversations in sft/train.jsonl."})
    sft_test: int = field(default=300, metadata={"help": "Conversations in sft/test.jsonl."})
    sft_rl_tier_share: float = field(default=0.05, metadata={
        "help": "Share of SFT's math problems from the RL tier: enough to show the form, little enough to leave RL "
                "room (the RL tier is where the SFT model's pass@1 should be 20-60%)."})
    tools_train: int = field(default=500, metadata={"help": "Calculator tool conversations, sft/tools_train.jsonl."})
    tools_test: int = field(default=50, metadata={"help": "Conversations in sft/tools_test.jsonl."})
    preferences_train: int = field(default=3000, metadata={"help": "Preference pairs in preferences/train.jsonl."})
    preferences_test: int = field(default=400, metadata={
        "help": "Held-out preference pairs, in preferences/test_verifiable.jsonl and test_safety.jsonl."})
    rl_train: int = field(default=3000, metadata={"help": "RL-tier prompts with verifiable answers, rl/train.jsonl."})
    rl_test: int = field(default=300, metadata={"help": "Held-out RL-tier prompts in rl/test.jsonl."})
    rl_safety_train: int = field(default=800, metadata={
        "help": "Forbidden and benign requests in rl/safety_train.jsonl, for RL that keeps the safety line."})
    eval_arithmetic: int = field(default=600, metadata={"help": "Two-digit questions in eval/arithmetic.jsonl."})
    eval_word_problems: int = field(default=600, metadata={"help": "One-step problems in eval/word_problems.jsonl."})
    eval_three_digit: int = field(default=600, metadata={"help": "Three-digit questions in eval/three_digit.jsonl."})
    eval_two_step: int = field(default=600, metadata={"help": "Two-step problems in eval/two_step.jsonl."})
    eval_multiple_choice: int = field(default=200, metadata={"help": "Items in eval/multiple_choice.jsonl."})
    eval_safety_per_kind: int = field(default=100, metadata={"help": "Prompts per kind in eval/safety.jsonl."})
    passkey_per_length: int = field(default=50, metadata={"help": "Items per context length in eval/passkey.jsonl."})
    passkey_lengths: list[int] = field(
        default_factory=lambda: [40, 80, 160, 400], metadata={"help": "Context lengths in words, eval/passkey.jsonl."})
    long_train_docs: int = field(default=2000, metadata={"help": "Pass-key documents in long/train.jsonl."})
    long_max_words: int = field(default=400, metadata={"help": "Longest context, in words, in long/train.jsonl."})

    def count(self, name: str) -> int:
        """The scaled value of a count field, never below 1 so every kind of row stays present."""
        return max(1, round(getattr(self, name) * self.scale))



def split_preferences(pairs: list[dict]) -> dict[str, list[dict]]:
    """Held-out pairs in two files: those a verifier can judge (math, tool calls) and those on the safety line, so
    that a reward model's accuracy is reported for each."""
    verifiable = [p for p in pairs if p["kind"] in ("math", "tool")]
    safety = [p for p in pairs if p["kind"] not in ("math", "tool")]
    return {"preferences/test_verifiable.jsonl": verifiable, "preferences/test_safety.jsonl": safety}


def generate_tiny_world(output_dir: str | Path, config: TinyWorldConfig) -> dict:
    """Writes every file of the tiny world under output_dir and returns the manifest dict.

    The manifest (also written as manifest.json, last, so its presence means the world is complete)
    holds the config, each file's row count, size and sha256, and the ground truth of the planted
    web defects.
    """
    if not 0 < config.heldout_fraction <= 0.5:
        raise ValueError(f"TinyWorldConfig.heldout_fraction must be in (0, 0.5], got {config.heldout_fraction}: "
                         "eval needs held-out pairs and training needs the rest.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "manifest.json").unlink(missing_ok=True)  # an old manifest must not vouch for a half-written world
    pool = OperandPairs(config.seed, config.heldout_fraction)

    def rng(stream: str) -> random.Random:
        # One stream per file family, so resizing one family leaves the others byte-identical.
        return random.Random(f"{config.seed}:{stream}")

    files = build_eval(rng("eval"), pool, config)
    quotable = files["eval/arithmetic.jsonl"] + files["eval/word_problems.jsonl"] + files["eval/three_digit.jsonl"]
    web, web_manifest = build_web(rng("web"), pool, quotable, config)
    web_more, web_more_manifest = build_web_more(rng("web_more"), web, web_manifest["clean"], config)
    files.update({
        "raw/web.jsonl": web,
        "raw/web_heldout.jsonl": build_web_heldout(rng("web_heldout"), pool, config),
        "raw/web_more.jsonl": web_more,
        "domain/train.jsonl": build_domain(rng("domain_train"), pool, config.count("domain_train_docs"), "domain",
                                           config.domain_rl_tier_share),
        "domain/heldout.jsonl": build_domain(rng("domain_heldout"), pool, config.count("domain_heldout_docs"),
                                             "domain-heldout", config.domain_rl_tier_share),
        "sft/train.jsonl": build_sft(rng("sft_train"), pool, "train", config.count("sft_train"),
                                     config.sft_rl_tier_share),
        "sft/test.jsonl": build_sft(rng("sft_test"), pool, "heldout", config.count("sft_test"),
                                    config.sft_rl_tier_share),
        "sft/tools_train.jsonl": build_tools(rng("tools_train"), pool, "train", config.count("tools_train")),
        "sft/tools_test.jsonl": build_tools(rng("tools_test"), pool, "heldout", config.count("tools_test")),
        "preferences/train.jsonl": build_preferences(
            rng("preferences_train"), pool, "train", config.count("preferences_train")),
        **split_preferences(build_preferences(rng("preferences_test"), pool, "heldout",
                                              config.count("preferences_test"))),
        "rl/train.jsonl": build_rl(rng("rl_train"), pool, "train", config.count("rl_train")),
        "rl/test.jsonl": build_rl(rng("rl_test"), pool, "heldout", config.count("rl_test")),
        "rl/safety_train.jsonl": build_rl_safety(rng("rl_safety_train"), config.count("rl_safety_train")),
        "long/train.jsonl": build_long(rng("long"), config, {row["answer"] for row in files["eval/passkey.jsonl"]}),
    })
    # What a teacher answers for distillation: the SFT conversations' prompts (every turn before the last answer).
    files["distill/train.jsonl"] = [{"prompt": row["messages"][:-1]} for row in files["sft/train.jsonl"]]
    # The training calls as the chat template writes them, for the tokenizer to learn: without them it spells the
    # call's JSON a byte or two at a time (63 tokens), and SFT models misspell its keys (README, "Tool calls").
    files["tokenizer/tool_calls.jsonl"] = [{"text": tool_call_text(call)} for row in files["sft/tools_train.jsonl"]
                                           for message in row["messages"] for call in message["tool_calls"] or ()]
    manifest_files = {}
    for relpath in sorted(files):
        data = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in files[relpath]).encode()
        write_atomically(output_dir / relpath, data)
        sha256 = hashlib.sha256(data).hexdigest()
        manifest_files[relpath] = {"rows": len(files[relpath]), "bytes": len(data), "sha256": sha256}
    manifest = {"seed": config.seed, "config": asdict(config), "files": manifest_files, "web": web_manifest,
                "web_more": web_more_manifest,
                "heldout_pairs": len(files["eval/heldout_pairs.jsonl"])}
    write_atomically(output_dir / "manifest.json", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest
