"""The pretraining baseline of bench/compare_trl.py: causal-LM training the way Transformers' `run_clm.py` example
does it (tokenize every document, concatenate, cut into blocks of `max_seq_length`, train with Trainer), reading
the same recipe file as scripts/pretrain.py and ignoring the keys it has no use for."""

import sys
from itertools import chain
from pathlib import Path

import yaml
from datasets import load_dataset
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)


def main(config_path: str):
    recipe = yaml.safe_load(open(config_path))
    training_keys = {f for f in TrainingArguments.__dataclass_fields__}
    (training_args,) = HfArgumentParser(TrainingArguments).parse_dict(
        {k: v for k, v in recipe.items() if k in training_keys})
    set_seed(training_args.seed)
    tokenizer = AutoTokenizer.from_pretrained(recipe["tokenizer_name_or_path"])
    architecture = dict(recipe["model_config"])
    config = AutoConfig.for_model(architecture.pop("model_type"), vocab_size=len(tokenizer),
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                  bos_token_id=tokenizer.bos_token_id, **architecture)
    model = AutoModelForCausalLM.from_config(config)

    source = recipe["dataset_mixture"]["datasets"][0]["path"]
    # A file, or a folder of datatrove's .jsonl.gz shards (what scripts/prepare_data.py writes).
    raw = load_dataset("json", data_files=source if Path(source).is_file() else f"{source}/*.jsonl.gz", split="train")
    block = recipe["max_seq_length"]

    def tokenize(batch):
        return tokenizer([text + tokenizer.eos_token for text in batch["text"]])

    def group_texts(batch):
        joined = {k: list(chain(*batch[k])) for k in batch}
        length = len(joined["input_ids"]) // block * block
        return {k: [t[i : i + block] for i in range(0, length, block)] for k, t in joined.items()}

    tokenized = raw.map(tokenize, batched=True, remove_columns=raw.column_names)
    blocks = tokenized.map(group_texts, batched=True)
    trainer = Trainer(model=model, args=training_args, train_dataset=blocks, processing_class=tokenizer,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    trainer.train()
    trainer.save_model()


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--config") + 1])
