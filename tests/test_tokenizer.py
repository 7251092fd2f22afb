"""The tokenizer stage trains byte-level BPE that AutoTokenizer loads and that round-trips any text."""

import json

import pytest
from conftest import load_script
from transformers import AutoTokenizer

from llm_recipes.recipe import RecipeError


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return AutoTokenizer.from_pretrained(tiny_tokenizer)


def test_held_out_text_round_trips_exactly(tokenizer, tiny_world):
    pages = [json.loads(line)["text"] for line in (tiny_world / "raw/web_heldout.jsonl").read_text().splitlines()]
    for text in pages[:50] + ["Ünïcode → 🙂, tabs\tand  double  spaces, 0123456789"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert tokenizer.unk_token_id not in ids


def test_digits_are_split_one_per_token(tokenizer):
    pieces = [tokenizer.decode([i]) for i in tokenizer("12345", add_special_tokens=False)["input_ids"]]
    assert pieces == ["1", "2", "3", "4", "5"]


def test_special_tokens_are_single_ids_and_pad_differs_from_eos(tokenizer):
    for token in ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]:
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_chat_template_marks_assistant_tokens(tokenizer):
    chat = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]
    encoded = tokenizer.apply_chat_template(chat, return_dict=True, return_assistant_tokens_mask=True)
    marked = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m]
    assert tokenizer.decode(marked) == "4<|im_end|>"


def test_fertility_and_bytes_per_token_are_reported(tiny_tokenizer):
    summary = json.loads((tiny_tokenizer / "stage_complete.json").read_text())
    assert 1.0 < summary["heldout"]["fertility"] < 4.0
    assert summary["heldout"]["bytes_per_token"] > 1.5  # merges were learned: better than one byte per token


def test_eos_must_be_a_special_token(tmp_path, tiny_world):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"output_dir: {tmp_path}/tok\neos_token: </s>\n"
                      f"dataset_mixture:\n  datasets: [{tiny_world}/raw/web.jsonl]\n")
    with pytest.raises(RecipeError, match="eos_token '</s>' must be one of special_tokens"):
        load_script("train_tokenizer").main(["--config", str(recipe)])
    assert not (tmp_path / "tok").exists()


def test_a_tokenizer_that_sees_the_training_calls_writes_a_call_in_far_fewer_tokens(tmp_path, tiny_world):
    """The tiny recipe trains on the world's tool calls and adds their tags whole: a held-out call (other operands)
    takes under half the tokens, and the tags are one token each."""
    from llm_recipes.tiny_world.chats import tool_call_text

    row = next(json.loads(line) for line in (tiny_world / "sft/tools_test.jsonl").read_text().splitlines())
    text = tool_call_text(next(m for m in row["messages"] if m["tool_calls"])["tool_calls"][0])
    lengths = {}
    for name, extra in (("plain", ""), ("tool_aware", f"    - {{path: {tiny_world}/tokenizer/tool_calls.jsonl, "
                                                       "weight: 0.1}\n")):
        out = tmp_path / name
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(
            f"output_dir: {out}\nvocab_size: 1024\nchat_template: recipes/templates/chatml.jinja\n"
            + ('added_tokens: ["<tool_call>", "</tool_call>"]\n' if extra else "")
            + f"dataset_mixture:\n  datasets:\n    - {{path: {tiny_world}/raw/web.jsonl, weight: 0.9}}\n{extra}"
            f"  eval_datasets: [{tiny_world}/raw/web_heldout.jsonl]\n")
        load_script("train_tokenizer").main(["--config", str(recipe)])
        tokenizer = AutoTokenizer.from_pretrained(out)
        lengths[name] = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert lengths["tool_aware"] * 2 < lengths["plain"], lengths
    assert len(tokenizer("<tool_call>", add_special_tokens=False)["input_ids"]) == 1
