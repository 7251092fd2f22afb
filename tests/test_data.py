"""Datasets named in recipes are checked for their stage's columns and mixed by sampling probability."""

import json

import pytest

from llm_recipes.data import DatasetFormatError, DatasetMixture, build_mixture, check_declared_columns
from llm_recipes.recipe import RecipeError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def two_sources(tmp_path):
    big = write_jsonl(tmp_path / "big.jsonl", [{"text": f"big {i}", "id": i} for i in range(1000)])
    small = write_jsonl(tmp_path / "small.jsonl", [{"text": f"small {i}", "id": i} for i in range(50)])
    return big, small


def test_sources_are_mixed_by_weight_over_an_example_budget(two_sources):
    big, small = two_sources
    mixture = DatasetMixture.from_recipe(
        {"datasets": [{"path": big, "weight": 0.75}, {"path": small, "weight": 0.25}], "max_examples": 800}
    )
    data, report = build_mixture(mixture, "text")
    texts = data["train"]["text"]
    assert len(texts) == 800
    share_small = sum(t.startswith("small") for t in texts) / len(texts)
    assert 0.20 < share_small < 0.30  # sampled, not subsampled: the small source is repeated to keep its share
    small_row = report.rows[1]
    assert small_row["taken"] == sum(t.startswith("small") for t in texts)
    assert small_row["epochs"] > 1
    assert "small.jsonl" in report.to_markdown()


def test_token_budget_stops_the_mixture_when_spent(two_sources):
    big, small = two_sources
    mixture = DatasetMixture.from_recipe({"datasets": [big, small], "max_tokens": 100})
    data, report = build_mixture(mixture, "text", count_tokens=lambda ex: 2)
    assert len(data["train"]) == 50
    assert report.total_tokens == 100


def test_held_out_sets_become_the_test_split(two_sources):
    big, small = two_sources
    mixture = DatasetMixture.from_recipe({"datasets": [big], "eval_datasets": [small]})
    data, _ = build_mixture(mixture, "text")
    assert len(data["test"]) == 50 and len(data["train"]) == 1000


def test_missing_column_names_the_dataset_and_the_column(tmp_path):
    path = write_jsonl(tmp_path / "chats.jsonl", [{"conversation": "hi"}])
    mixture = DatasetMixture.from_recipe({"datasets": [path]})
    with pytest.raises(DatasetFormatError) as error:
        build_mixture(mixture, "preference")
    assert "chats.jsonl" in str(error.value) and "'chosen'" in str(error.value)


def test_renamed_columns_satisfy_the_format(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "1+1", "solution": "2"}])
    mixture = DatasetMixture.from_recipe(
        {"datasets": [{"path": path, "rename_columns": {"question": "prompt", "solution": "answer"}}]}
    )
    data, _ = build_mixture(mixture, "prompt_answer")
    assert data["train"][0] == {"prompt": "1+1", "answer": "2"}


def pairs_of_kinds(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"q{i}", "chosen": "a", "rejected": "b",
                                                   "kind": kind} for i, kind in enumerate(["math", "tool", "math"])])


def test_where_keeps_the_rows_of_one_kind_as_a_named_held_out_set(tmp_path):
    path = pairs_of_kinds(tmp_path)
    mixture = DatasetMixture.from_recipe({"datasets": [path], "eval_datasets": {
        "math": {"path": path, "where": {"kind": "math"}, "columns": ["prompt", "chosen", "rejected"]},
        "any": {"path": path, "where": {"kind": ["tool", "math"]}}}})
    data, _ = build_mixture(mixture, "preference")
    assert data["math"]["prompt"] == ["q0", "q2"] and data["math"].column_names == ["prompt", "chosen", "rejected"]
    assert len(data["any"]) == 3 and len(data["train"]) == 3


def test_where_on_a_missing_column_names_the_closest_one(tmp_path):
    mixture = DatasetMixture.from_recipe({"datasets": [{"path": pairs_of_kinds(tmp_path), "where": {"kinds": "x"}}]})
    with pytest.raises(DatasetFormatError, match="pairs.jsonl' has no column 'kinds'.*did you mean 'kind'"):
        build_mixture(mixture, "preference")


def test_where_that_keeps_no_row_is_refused(tmp_path):
    mixture = DatasetMixture.from_recipe({"datasets": [{"path": pairs_of_kinds(tmp_path), "where": {"kind": "Math"}}]})
    with pytest.raises(DatasetFormatError, match="no row has {'kind': 'Math'}"):
        build_mixture(mixture, "preference")


def test_declared_columns_are_checked_without_loading():
    mixture = DatasetMixture.from_recipe({"datasets": [{"path": "some-org/some-hub-dataset", "columns": ["text2"]}]})
    with pytest.raises(DatasetFormatError, match="'text'"):
        check_declared_columns(mixture, "text")


def test_unknown_key_in_a_dataset_entry_suggests_the_valid_one():
    with pytest.raises(RecipeError, match="unknown key 'wieght'.*'weight'"):
        DatasetMixture.from_recipe({"datasets": [{"path": "x.jsonl", "wieght": 2}]})


def test_a_mixture_without_datasets_is_refused():
    with pytest.raises(RecipeError, match="datasets"):
        DatasetMixture.from_recipe({"max_examples": 3})


@pytest.mark.parametrize("every_key_in_every_message", [True, False], ids=["structs", "json"])
def test_conversations_with_and_without_tools_mix_into_one_schema(tmp_path, every_key_in_every_message):
    # Messages with the same keys load as structs; messages of mixed shape load as JSON. Either mixes with plain chat.
    plain = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 20)
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "1 + 2"}}}
    tool = {"type": "function", "function": {"name": "calculator", "description": "adds"}}
    messages = [{"role": "user", "content": "1 + 2?"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "name": "calculator", "content": "3"}]
    if every_key_in_every_message:
        messages = [{"name": None, "tool_calls": None, **m} for m in messages]
    tools = write_jsonl(tmp_path / "tools.jsonl", [{"tools": [tool], "messages": messages}] * 20)
    data, _ = build_mixture(DatasetMixture.from_recipe({"datasets": [plain, tools]}), "conversational")
    rows = data["train"]
    assert sorted(rows.column_names) == ["messages", "tools"]
    chat = next(r for r in rows if r["tools"] is None)  # what a source lacks is null, which templates read as absent
    assert chat["messages"][1]["content"] == "hello" and not chat["messages"][1].get("tool_calls")
    with_tools = next(r for r in rows if r["tools"] is not None)
    assert with_tools["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"expression": "1 + 2"}
