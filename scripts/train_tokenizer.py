"""Train a byte-level BPE tokenizer with the `tokenizers` library and save it for `AutoTokenizer`.

    python scripts/train_tokenizer.py --config recipes/tiny/tokenizer.yaml

Byte-level BPE starts from the 256 bytes, so any Unicode text encodes without an unknown token (the byte
fallback of sentencepiece-style tokenizers comes for free). Digits can be split one per token, which small
models need to learn arithmetic. Prints fertility (tokens per word) and bytes per token on held-out text.
"""

import llm_recipes  # noqa: F401, I001  first of all: it keeps known library start-up noise out of the log
import time
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from llm_recipes import stage
from llm_recipes.data import DatasetMixture, build_mixture, check_declared_columns
from llm_recipes.recipe import RecipeError, RecipeParser, repo_path


@dataclass
class TokenizerArguments(stage.StageArguments):
    output_dir: str = field(default="runs/tokenizer", metadata={"help": "Where the tokenizer is saved."})
    vocab_size: int = field(default=32000, metadata={"help": "Vocabulary size, special tokens included."})
    min_frequency: int = field(default=2, metadata={"help": "A merge must occur this often to be learned."})
    special_tokens: list[str] = field(
        default_factory=lambda: ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"],
        metadata={"help": "Tokens never split and never merged; they get the first ids, in this order."},
    )
    added_tokens: list[str] = field(
        default_factory=list,
        metadata={"help": "Tokens added whole after training but not special, so they decode as text: e.g. "
                  "`<think>` and `</think>`, the reasoning block of reasoning models, as Qwen3 adds them."},
    )
    bos_token: str | None = field(
        default=None, metadata={"help": "Beginning-of-sequence token, if the model uses one."}
    )
    eos_token: str = field(default="<|endoftext|>", metadata={"help": "Token that ends a document."})
    pad_token: str = field(default="<|pad|>", metadata={"help": "Padding token; must differ from eos_token."})
    split_digits: bool = field(default=True, metadata={"help": "Split numbers into single digits (as Llama 3 and "
                                                       "Qwen do), so arithmetic is learned digit by digit."})
    chat_template: str | None = field(
        default=None, metadata={"help": "Path of a Jinja chat template file saved with the tokenizer."}
    )
    model_max_length: int = field(default=2048, metadata={"help": "Longest sequence the model is meant to see."})


def train(args: TokenizerArguments, texts) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    splitters = [pre_tokenizers.Digits(individual_digits=True)] if args.split_digits else []
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        splitters + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size,
        min_frequency=args.min_frequency,
        special_tokens=args.special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in args.added_tokens])
    return tokenizer


def measure(tokenizer, texts) -> dict:
    """Fertility (tokens per whitespace word) and bytes per token: lower fertility means cheaper text."""
    tokens = sum(len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"])
    words = sum(len(t.split()) for t in texts)
    size = sum(len(t.encode("utf-8")) for t in texts)
    return {"fertility": tokens / max(words, 1), "bytes_per_token": size / max(tokens, 1), "tokens": tokens}


ARGUMENTS = (TokenizerArguments,)
DATASET_FORMAT = "text"


def main(argv=None):
    (args,) = RecipeParser(ARGUMENTS).parse(argv)
    stage.setup_logging()
    for name in ("eos_token", "pad_token", "bos_token"):
        token = getattr(args, name)
        if token is not None and token not in args.special_tokens:
            raise RecipeError(f"{name} {token!r} must be one of special_tokens {args.special_tokens}.")
    clash = set(args.added_tokens) & set(args.special_tokens)
    if clash:
        raise RecipeError(f"added_tokens: {sorted(clash)} are special_tokens already; list each token once.")
    if args.pad_token == args.eos_token:
        raise RecipeError("pad_token must differ from eos_token, or padding is learned as the end of text.")
    # Byte-level BPE starts from the 256 bytes and the special tokens; a smaller vocab_size is silently raised.
    floor = len(pre_tokenizers.ByteLevel.alphabet()) + len(args.special_tokens)
    if args.vocab_size < floor:
        raise RecipeError(f"vocab_size: {args.vocab_size} is smaller than the byte alphabet and the special tokens "
                          f"({floor}); give at least {floor} (plus the merges to learn).")
    template = None
    if args.chat_template:
        template_path = Path(repo_path(args.chat_template))
        if not template_path.is_file():
            raise RecipeError(f"chat_template: file not found: {args.chat_template}")
        template = template_path.read_text()
    mixture = DatasetMixture.from_recipe(args.dataset_mixture)
    check_declared_columns(mixture, DATASET_FORMAT)
    data, report = build_mixture(mixture, DATASET_FORMAT)
    stage.logger.info("Training on %s documents:\n%s", f"{report.total_examples:,}", report.to_markdown())
    if args.dry_run:
        print(f"documents: {report.total_examples:,}; vocab_size: {args.vocab_size:,}; output: {args.output_dir}")
        return

    started = time.time()
    tokenizer = train(args, data["train"]["text"])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=args.bos_token,
        eos_token=args.eos_token,
        pad_token=args.pad_token,
        model_max_length=args.model_max_length,
        clean_up_tokenization_spaces=False,
    )
    if template:
        fast.chat_template = template
    fast.save_pretrained(args.output_dir)
    reloaded = AutoTokenizer.from_pretrained(args.output_dir)  # what every later stage will load
    summary = {"stage": "tokenizer", "vocab_size": len(reloaded), "train_seconds": time.time() - started}
    if "test" in data:
        summary["heldout"] = measure(reloaded, data["test"]["text"])
        stage.logger.info("Held-out: %.3f tokens per word, %.2f bytes per token",
                          summary["heldout"]["fertility"], summary["heldout"]["bytes_per_token"])
    stage.mark_complete(args.output_dir, summary)


if __name__ == "__main__":
    stage.run(main)
