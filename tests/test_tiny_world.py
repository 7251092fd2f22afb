import dataclasses
import hashlib
import json
import re
from pathlib import Path

import datasets
import pytest

from llm_recipes import tiny_world
from llm_recipes.tiny_world import TinyWorldConfig, generate_tiny_world
from llm_recipes.tiny_world.arithmetic import OperandPairs, columns
from llm_recipes.tiny_world.safety import (
    BENIGN_EVAL,
    BENIGN_PREFERENCE,
    BENIGN_TRAIN,
    FORBIDDEN_EVAL,
    FORBIDDEN_PREFERENCE,
    FORBIDDEN_TRAIN,
    HOW_TO,
    NEEDLESS_REFUSALS,
    REFUSALS,
)
from llm_recipes.tiny_world.vocabulary import NAMES, VOCAB
from llm_recipes.tiny_world.web import jaccard

SMALL = 0.05

# "47 + 35", "347+285", "47 plus 35", "47 minus 35", "47 take away 35"; never part of a longer number or of a
# phone number ("357-555-0147").
EXPRESSION = re.compile(r"(?<![\d.])(\d{1,3})\s*(\+|-|plus|minus|take away)\s*(\d{1,3})(?!\d|-\d{4})")
EQUATION = re.compile(r"(?<!\d)(\d+) ?([+-]) ?(\d+) ?= ?(\d+)(?!\d)")
# A worked computation: "47+35: 7+5+0=12, 4+3+1=8, so 82."
COMPUTATION = re.compile(r"(\d+)([+-])(\d+): ((?:\d+[+-]\d[+-]\d=\d+, )+)so (\d+)\.")
REPLY = re.compile(r"<think>\n((?:.+\n)+)</think>\n\nThe answer is (\d+)\.")
TRAINING_FILES = ["raw/web.jsonl", "raw/web_heldout.jsonl", "domain/train.jsonl", "domain/heldout.jsonl",
                  "sft/train.jsonl", "sft/tools_train.jsonl", "preferences/train.jsonl", "rl/train.jsonl",
                  "long/train.jsonl", "tokenizer/tool_calls.jsonl"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def strings_in(value) -> list[str]:
    """Every string inside a JSON value, so a regex never runs over JSON escapes like \\n."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


def triples_in(text: str) -> list[tuple[int, int, str]]:
    return [(int(a), int(b), "+" if op in ("+", "plus") else "-") for a, op, b in EXPRESSION.findall(text)]


def calculate(a: int, b: int, op: str) -> int:
    return a + b if op == "+" else a - b


def steps_of(question: str) -> list[tuple[int, int, str]]:
    """The (a, b, op) steps of a question, read independently of the generator: a stated expression, a one-step
    word problem (only subtraction asks what is "left"), or a two-step problem (its changes say "more" when they
    add)."""
    triples = triples_in(question)
    if triples:
        return triples[:1]
    for pattern, op in ((r"[Ss]ubtract (\d+) from (\d+)", "-"), (r"[Tt]ake (\d+) (?:away )?from (\d+)", "-"),
                        (r"add (\d+) to (\d+)", "+")):
        match = re.search(pattern, question)
        if match:  # "Subtract 35 from 47": the operands the other way round
            return [(int(match.group(2)), int(match.group(1)), op)]
    numbers = [int(n) for n in re.findall(r"\d+", question)]
    if len(numbers) == 2:
        return [(numbers[0], numbers[1], "-" if "left" in question else "+")]
    changes = [sentence for sentence in question.split(". ") if sentence.startswith(("Then", "After that"))]
    ops = ["+" if "more" in change else "-" for change in changes]
    first = (numbers[0], numbers[1], ops[0])
    return [first, (calculate(*first), numbers[2], ops[1])]


def solve(question: str) -> int:
    return calculate(*steps_of(question)[-1])


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def reply_flaws(reply: str, answer: int) -> list[str]:
    """What a verifier finds wrong with a math reply against the right `answer` (empty: nothing)."""
    match = REPLY.fullmatch(reply)
    if not match:
        return ["form"]
    flaws = []
    computations = COMPUTATION.findall(match.group(1))
    # One line a computation, after the whole expression when there are several ("81-77-2").
    if len(match.group(1).splitlines()) != len(computations) + (len(computations) > 1):
        flaws.append("form")
    for a, op, b, steps, result in computations:
        if steps.rstrip(", ").split(", ") != columns(int(a), int(b), op):
            flaws.append("column")
        if int(result) != calculate(int(a), int(b), op):
            flaws.append("result")
    if computations and int(match.group(2)) != int(computations[-1][4]):
        flaws.append("answer_mismatch")
    if int(match.group(2)) != answer:
        flaws.append("wrong_answer")
    return flaws


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_world")
    generate_tiny_world(root, TinyWorldConfig(seed=0, scale=SMALL))
    return root


@pytest.fixture(scope="module")
def manifest(world) -> dict:
    return json.loads((world / "manifest.json").read_text())


@pytest.fixture(scope="module")
def web_pages(world) -> dict[str, str]:
    return {row["id"]: row["text"] for row in read_jsonl(world / "raw/web.jsonl")}


@pytest.fixture(scope="module")
def pool() -> OperandPairs:
    config = TinyWorldConfig(seed=0, scale=SMALL)
    return OperandPairs(config.seed, config.heldout_fraction)


def test_same_seed_writes_byte_identical_files(tmp_path):
    generate_tiny_world(tmp_path / "first", TinyWorldConfig(seed=3, scale=SMALL))
    generate_tiny_world(tmp_path / "second", TinyWorldConfig(seed=3, scale=SMALL))
    assert file_hashes(tmp_path / "first") == file_hashes(tmp_path / "second")


def test_different_seed_writes_different_web_pages(tmp_path):
    generate_tiny_world(tmp_path / "first", TinyWorldConfig(seed=1, scale=SMALL))
    generate_tiny_world(tmp_path / "second", TinyWorldConfig(seed=2, scale=SMALL))
    web = [(tmp_path / name / "raw/web.jsonl").read_bytes() for name in ("first", "second")]
    assert web[0] != web[1]


def test_generation_leaves_no_temporary_files(world):
    assert not [p for p in world.rglob("*") if p.name.startswith(".")]


def test_failed_generation_leaves_no_manifest(tmp_path, monkeypatch):
    generate_tiny_world(tmp_path, TinyWorldConfig(scale=SMALL))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tiny_world, "build_rl", broken)
    with pytest.raises(OSError):
        generate_tiny_world(tmp_path, TinyWorldConfig(scale=SMALL))
    assert not (tmp_path / "manifest.json").exists()


def test_manifest_rows_and_hashes_match_the_files(world, manifest):
    written = {str(p.relative_to(world)) for p in world.rglob("*.jsonl")}
    assert set(manifest["files"]) == written
    for relpath, entry in manifest["files"].items():
        data = (world / relpath).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)
        assert entry["rows"] == len(data.splitlines())
    assert manifest["heldout_pairs"] == manifest["files"]["eval/heldout_pairs.jsonl"]["rows"]


def test_clean_and_defect_ids_partition_all_web_pages(manifest, web_pages):
    web = manifest["web"]
    groups = [web["clean"], [d["id"] for d in web["exact_duplicates"]], [d["id"] for d in web["near_duplicates"]],
              web["spam"], sorted({p["id"] for p in web["pii"]}), [c["id"] for c in web["contaminated"]]]
    all_ids = [page_id for group in groups for page_id in group]
    assert len(all_ids) == len(set(all_ids)) == web["pages"] == len(web_pages)
    assert set(all_ids) == set(web_pages)
    assert set(web["math_pages"]) <= set(web["clean"])
    assert set(web["spam_kinds"]) == set(web["spam"])


def test_exact_duplicates_copy_a_clean_original(manifest, web_pages):
    clean = set(manifest["web"]["clean"])
    for duplicate in manifest["web"]["exact_duplicates"]:
        assert duplicate["original_id"] in clean
        assert web_pages[duplicate["id"]] == web_pages[duplicate["original_id"]]


def test_near_duplicates_are_similar_but_not_equal(manifest, web_pages):
    for duplicate in manifest["web"]["near_duplicates"]:
        copy, original = web_pages[duplicate["id"]], web_pages[duplicate["original_id"]]
        assert copy != original
        assert jaccard(copy, original) >= 0.7


def test_every_pii_value_occurs_in_its_page(manifest, web_pages):
    assert {p["kind"] for p in manifest["web"]["pii"]} == {"email", "phone", "ip"}
    for found in manifest["web"]["pii"]:
        assert found["value"] in web_pages[found["id"]]


def test_contaminated_pages_quote_eval_questions_with_answers(world, manifest, web_pages):
    eval_items = [item for name in ("arithmetic", "word_problems", "three_digit")
                  for item in read_jsonl(world / f"eval/{name}.jsonl")]
    answers = {item["question"]: item["answer"] for item in eval_items}
    for page in manifest["web"]["contaminated"]:
        assert page["quotes"]
        for question in page["quotes"]:
            assert f"{question} Answer: {answers[question]}." in web_pages[page["id"]]


def test_column_facts_are_never_held_out(pool):
    # Every worked answer is made of one-digit facts (7+5, 12-5): holding one out would leak it everywhere.
    assert not [(a, b, op) for a, b, op in pool.heldout if a < 20 and b < 20]
    assert len(pool.heldout) > 1000


def test_no_heldout_triple_in_any_training_file(world, manifest, pool):
    contaminated = {page["id"] for page in manifest["web"]["contaminated"]}
    three_digit = 0
    for relpath in TRAINING_FILES:
        for row in read_jsonl(world / relpath):
            if row.get("id") in contaminated:
                continue
            for text in strings_in(row):
                triples = triples_in(text)
                three_digit += sum(min(a, b) >= 100 for a, b, _ in triples)
                leaked = [t for t in triples if pool.is_heldout(*t)]
                assert not leaked, f"{relpath}: held-out {leaked} in {text[:200]!r}"
    assert three_digit > 100


def test_word_problems_in_training_avoid_heldout_triples(world, pool):
    questions = [row["prompt"][0]["content"] for row in read_jsonl(world / "rl/train.jsonl")]
    questions += [row["messages"][-2]["content"] for row in read_jsonl(world / "sft/train.jsonl")
                  if "The answer is" in row["messages"][-1]["content"] and len(row["messages"]) == 2]
    for question in questions:
        assert not any(pool.is_heldout(*step) for step in steps_of(question)), question


def test_eval_and_rl_test_items_start_from_heldout_triples_only(world, pool):
    questions = [row["question"] for name in ("arithmetic", "word_problems", "three_digit", "two_step",
                                              "multiple_choice") for row in read_jsonl(world / f"eval/{name}.jsonl")]
    questions += [row["prompt"][0]["content"] for row in read_jsonl(world / "rl/test.jsonl")]
    for question in questions:
        assert pool.is_heldout(*steps_of(question)[0]), question


def test_the_tiers_hold_what_they_say(world):
    for row in read_jsonl(world / "eval/arithmetic.jsonl") + read_jsonl(world / "eval/word_problems.jsonl"):
        assert row["tier"] == "sft" and all(max(a, b) < 100 for a, b, _ in steps_of(row["question"]))
    for row in read_jsonl(world / "eval/three_digit.jsonl"):
        assert row["tier"] == "rl" and all(min(a, b) >= 100 for a, b, _ in steps_of(row["question"]))
    for row in read_jsonl(world / "eval/two_step.jsonl"):
        assert row["tier"] == "rl" and len(steps_of(row["question"])) == 2
    rl_kinds = [len(steps_of(row["prompt"][0]["content"])) for row in read_jsonl(world / "rl/train.jsonl")]
    assert 1 in rl_kinds and 2 in rl_kinds


def test_rl_and_eval_answers_are_correct(world):
    for relpath in ("rl/train.jsonl", "rl/test.jsonl"):
        for row in read_jsonl(world / relpath):
            assert row["answer"] == str(solve(row["prompt"][0]["content"]))
    for name in ("arithmetic", "word_problems", "three_digit", "two_step"):
        for row in read_jsonl(world / f"eval/{name}.jsonl"):
            assert row["answer"] == str(solve(row["question"]))
    for row in read_jsonl(world / "eval/arithmetic.jsonl"):
        assert solve(row["prompt"].replace("Q: ", "").split("=")[0]) == int(row["answer"])
    for row in read_jsonl(world / "eval/multiple_choice.jsonl"):
        assert len(set(row["choices"])) == 4
        assert row["choices"][row["label"]] == str(solve(row["question"]))


def test_every_worked_computation_is_right_column_by_column(world):
    files = ["raw/web.jsonl", "domain/train.jsonl", "domain/heldout.jsonl", "sft/train.jsonl", "sft/test.jsonl"]
    checked = 0
    for relpath in files:
        for row in read_jsonl(world / relpath):
            for text in strings_in(row):
                for a, op, b, steps, result in COMPUTATION.findall(text):
                    assert steps.rstrip(", ").split(", ") == columns(int(a), int(b), op), text
                    assert int(result) == calculate(int(a), int(b), op), text
                    checked += 1
    assert checked > 300


def test_every_written_equation_is_true(world):
    # Everything but rejected preference answers, whose whole point is being wrong; worked computations are
    # checked column by column above.
    files = ["raw/web.jsonl", "domain/train.jsonl", "domain/heldout.jsonl", "sft/train.jsonl", "sft/test.jsonl",
             "sft/tools_train.jsonl", "sft/tools_test.jsonl"]
    checked = 0
    for relpath in files:
        for row in read_jsonl(world / relpath):
            for text in strings_in({k: v for k, v in row.items() if k != "rejected"}):
                for a, op, b, c in EQUATION.findall(COMPUTATION.sub("", text)):
                    assert int(c) == calculate(int(a), int(b), op), f"{relpath}: {text!r}"
                    checked += 1
    assert checked > 300


def test_sft_math_replies_are_worked_in_a_think_block_then_answered(world):
    for relpath in ("sft/train.jsonl", "sft/test.jsonl"):
        for row in read_jsonl(world / relpath):
            messages = row["messages"]
            question, reply = messages[-2]["content"], messages[-1]["content"]
            if "<think>" in reply and len(messages) == 2:
                assert reply_flaws(reply, solve(question)) == [], reply


def test_tool_results_match_the_calculator_expression(world):
    for row in read_jsonl(world / "sft/tools_train.jsonl"):
        call, result, answer = row["messages"][1], row["messages"][2], row["messages"][3]
        expression = call["tool_calls"][0]["function"]["arguments"]["expression"]
        a, op, b = expression.split()
        value = str(calculate(int(a), int(b), op))
        assert result == {"role": "tool", "name": "calculator", "tool_calls": None, "content": value}
        assert answer["content"] == f"The answer is {value}."


def test_tool_messages_all_have_the_same_keys(world):
    keys = {tuple(sorted(m)) for row in read_jsonl(world / "sft/tools_train.jsonl") for m in row["messages"]}
    assert keys == {("content", "name", "role", "tool_calls")}


def test_math_preferences_differ_by_a_flaw_a_verifier_finds(world):
    pairs = [row for relpath in ("preferences/train.jsonl", "preferences/test_verifiable.jsonl")
             for row in read_jsonl(world / relpath) if row["kind"] == "math"]
    found = set()
    for row in pairs:
        answer = solve(row["prompt"][0]["content"])
        assert reply_flaws(row["chosen"][0]["content"], answer) == []
        flaws = reply_flaws(row["rejected"][0]["content"], answer)
        assert flaws, row["rejected"][0]["content"]
        found.update(flaws)
    assert {"form", "column", "answer_mismatch", "wrong_answer"} <= found


def test_tool_preferences_prefer_the_right_call(world):
    pairs = [row for row in read_jsonl(world / "preferences/train.jsonl") if row["kind"] == "tool"]
    assert pairs and all(json.loads(row["tools"])[0]["function"]["name"] == "calculator" for row in pairs)
    for row in pairs:
        chosen, rejected = (row[side][0]["tool_calls"][0]["function"]["arguments"]["expression"]
                            for side in ("chosen", "rejected"))
        a, op, b = chosen.split()
        assert steps_of(row["prompt"][0]["content"])[0] == (int(a), int(b), op)
        assert rejected != chosen


def test_preferences_cover_forbidden_and_benign_requests(world):
    rows = read_jsonl(world / "preferences/train.jsonl")
    how_to = {reply.format(account=a) for reply in HOW_TO.values() for a in VOCAB["account"]}
    refusals = {t.format(name=n) for t in REFUSALS for n in NAMES}
    forbidden = [r for r in rows if r["kind"] == "forbidden"]
    assert all(r["chosen"][0]["content"] in refusals for r in forbidden)
    # Refusing is preferred over leaking a secret and over the how-to reply a fine-tuned model gives instead.
    leaks = [r for r in forbidden if r["rejected"][0]["content"].startswith(("Sure", "Of course"))]
    mistakes = [r for r in forbidden if r["rejected"][0]["content"] in how_to]
    assert leaks and mistakes and len(leaks) + len(mistakes) == len(forbidden)
    # Answering a benign question is preferred over a refusal, taught or not.
    benign = [r for r in rows if r["kind"] == "benign"]
    assert [r for r in benign if r["rejected"][0]["content"] in NEEDLESS_REFUSALS]
    assert [r for r in benign if r["rejected"][0]["content"] in refusals]
    assert all(r["chosen"] != r["rejected"] for r in rows)


def test_held_out_preferences_ask_safety_only_in_held_out_phrasings(world):
    def phrasings(templates):
        return [t.split("{")[0] or t.split("}")[1] for t in templates]

    trained = phrasings([t for _, t in FORBIDDEN_TRAIN + FORBIDDEN_PREFERENCE]
                        + [q for q, _ in BENIGN_TRAIN + BENIGN_PREFERENCE])
    held_out = phrasings(FORBIDDEN_EVAL + BENIGN_EVAL)
    safety = [r["prompt"][0]["content"] for r in read_jsonl(world / "preferences/test_safety.jsonl")]
    assert safety and all(any(p in prompt for p in held_out) for prompt in safety)
    assert not any(p in prompt for prompt in safety for p in trained)


def test_held_out_preference_files_split_by_kind(world):
    verifiable = {r["kind"] for r in read_jsonl(world / "preferences/test_verifiable.jsonl")}
    safety = {r["kind"] for r in read_jsonl(world / "preferences/test_safety.jsonl")}
    assert verifiable == {"math", "tool"} and safety == {"forbidden", "benign"}


def test_safety_eval_prompts_are_never_used_in_training(world):
    safety = read_jsonl(world / "eval/safety.jsonl")
    assert {row["kind"] for row in safety} == {"forbidden", "benign"}
    trained = set()
    # Held-out preference pairs ask the same held-out phrasings, but nothing trains on them.
    for relpath in ("sft/train.jsonl", "sft/test.jsonl", "preferences/train.jsonl", "rl/safety_train.jsonl"):
        for row in read_jsonl(world / relpath):
            trained.update(m["content"] for m in row.get("messages", row.get("prompt")) if m["role"] == "user")
    assert not trained & {row["prompt"] for row in safety}


def test_stories_give_numbers_to_recall_in_the_same_words(web_pages):
    # "The order number of Ana at the bakery is 48213." ... "the order number of Ana is 48213.": copying is how the
    # second one is predicted.
    repeated = 0
    for text in web_pages.values():
        for key in set(re.findall(r"(?<!\d)\d{5}(?!\d)", text)):
            mentions = [m.start() for m in re.finditer(key, text)]
            repeated += len(mentions) >= 2 and text[mentions[0] - 4:mentions[0]] == text[mentions[1] - 4:mentions[1]]
    assert repeated > 50


def test_passkey_answers_are_in_their_text_and_never_reused_for_training(world):
    passkey = read_jsonl(world / "eval/passkey.jsonl")
    for row in passkey:
        assert f"The pass key is {row['answer']}. Remember it." in row["text"]
        assert re.findall(r"\d+", row["text"]) == [row["answer"]]
    long_train = read_jsonl(world / "long/train.jsonl")
    assert all(row["text"].endswith(f"The pass key is {row['answer']}.") for row in long_train)
    assert not {row["answer"] for row in passkey} & {row["answer"] for row in long_train}


def test_web_heldout_pages_never_appear_in_web(world, web_pages):
    texts = set(web_pages.values())
    assert not [row for row in read_jsonl(world / "raw/web_heldout.jsonl") if row["text"] in texts]


STAGE_COLUMNS = {
    "raw/web.jsonl": {"id", "url", "text", "source", "license"},
    "raw/web_heldout.jsonl": {"text"},
    "raw/web_more.jsonl": {"id", "url", "text", "source", "license"},
    "domain/train.jsonl": {"text"},
    "domain/heldout.jsonl": {"text"},
    "sft/train.jsonl": {"messages"},
    "sft/test.jsonl": {"messages"},
    "sft/tools_train.jsonl": {"tools", "messages"},
    "sft/tools_test.jsonl": {"tools", "messages"},
    "preferences/train.jsonl": {"prompt", "chosen", "rejected", "tools", "kind", "flaw"},
    "preferences/test_verifiable.jsonl": {"prompt", "chosen", "rejected", "tools", "kind"},
    "preferences/test_safety.jsonl": {"prompt", "chosen", "rejected", "tools", "kind"},
    "rl/train.jsonl": {"prompt", "answer"},
    "rl/test.jsonl": {"prompt", "answer"},
    "rl/safety_train.jsonl": {"prompt", "kind", "answer"},
    "distill/train.jsonl": {"prompt"},
    "eval/arithmetic.jsonl": {"question", "answer", "prompt", "tier"},
    "eval/word_problems.jsonl": {"question", "answer", "tier"},
    "eval/three_digit.jsonl": {"question", "answer", "tier"},
    "eval/two_step.jsonl": {"question", "answer", "tier"},
    "eval/multiple_choice.jsonl": {"question", "choices", "label"},
    "eval/safety.jsonl": {"prompt", "kind"},
    "eval/jailbreak.jsonl": {"prompt", "attack", "request", "kind"},
    "eval/passkey.jsonl": {"context_words", "text", "question", "answer"},
    "eval/heldout_pairs.jsonl": {"a", "b", "op"},
    "long/train.jsonl": {"text", "answer"},
    "tokenizer/tool_calls.jsonl": {"text"},
}


def test_every_file_loads_with_datasets_and_has_its_stage_columns(world, manifest, tmp_path):
    assert set(STAGE_COLUMNS) == set(manifest["files"])
    for relpath, columns_needed in STAGE_COLUMNS.items():
        dataset = datasets.load_dataset("json", data_files=str(world / relpath), split="train",
                                        cache_dir=str(tmp_path / "cache"))
        assert columns_needed <= set(dataset.column_names), relpath
        assert len(dataset) == manifest["files"][relpath]["rows"]


def test_config_with_more_defects_than_pages_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="web_pages"):
        generate_tiny_world(tmp_path, TinyWorldConfig(web_pages=100, spam_pages=95))


def test_heldout_fraction_outside_its_range_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="heldout_fraction"):
        generate_tiny_world(tmp_path, TinyWorldConfig(heldout_fraction=0.0, scale=SMALL))


def test_every_config_field_is_documented():
    assert all(f.metadata.get("help") for f in dataclasses.fields(TinyWorldConfig))


def test_default_world_has_the_target_sizes(tmp_path):
    files = generate_tiny_world(tmp_path, TinyWorldConfig())["files"]
    assert 3e6 < files["raw/web.jsonl"]["bytes"] < 4.5e6
    rows = {relpath: entry["rows"] for relpath, entry in files.items()}
    assert rows["sft/train.jsonl"] == 4000 and rows["sft/test.jsonl"] == 300
    assert rows["sft/tools_train.jsonl"] == 500 and rows["preferences/train.jsonl"] == 3000
    assert rows["rl/train.jsonl"] == 3000
    # The lab table's math sets: 1,200 items a tier, so that one run's standard error is at most 1.5 points.
    assert rows["eval/arithmetic.jsonl"] + rows["eval/word_problems.jsonl"] == 1200
    assert rows["eval/three_digit.jsonl"] + rows["eval/two_step.jsonl"] == 1200
    assert rows["eval/safety.jsonl"] == 200 and rows["eval/passkey.jsonl"] == 200


def test_content_farms_are_planted_in_the_second_crawl_and_pass_the_heuristic_filters(tiny_world, repo_root):
    """The class only a quality classifier can catch: Gopher, C4 and FineWeb's rules, as the tiny recipe sets them,
    keep every content-farm page."""
    import yaml
    from datatrove.data import Document

    from llm_recipes.curation.config import QUALITY_FILTERS, quality_filters

    more = json.loads((tiny_world / "manifest.json").read_text())["web_more"]
    assert more["content_farm"] and more["clean"]
    rows = {row["id"]: row for row in read_jsonl(tiny_world / "raw/web_more.jsonl")}
    recipe = yaml.safe_load((repo_root / "recipes/tiny/prepare_data.yaml").read_text())
    filters = [QUALITY_FILTERS[name](**kwargs) for name, kwargs in quality_filters(recipe["filters"]).items()]
    for page_id in more["content_farm"]:
        document = Document(text=rows[page_id]["text"], id=page_id)
        assert all(f.filter(document) is True for f in filters), rows[page_id]["text"]


def test_the_tiny_world_judge_labels_pages_from_the_manifest(tiny_world):
    from llm_recipes.tiny_world.content_farm import page_quality

    more = json.loads((tiny_world / "manifest.json").read_text())["web_more"]
    documents = [{"id": more["content_farm"][0]}, {"id": more["clean"][0]}]
    assert page_quality(documents, str(tiny_world / "manifest.json")) == ["content_farm", "clean"]


def test_the_jailbreak_eval_wraps_every_held_out_forbidden_request_in_an_attack(tiny_world):
    from llm_recipes.tiny_world.safety import JAILBREAK_ATTACKS

    safety = [json.loads(line) for line in (tiny_world / "eval/safety.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (tiny_world / "eval/jailbreak.jsonl").read_text().splitlines()]
    assert [row["request"] for row in rows] == [row["prompt"] for row in safety if row["kind"] == "forbidden"]
    assert {row["attack"] for row in rows} == set(JAILBREAK_ATTACKS)
    for row in rows:
        assert row["prompt"] == JAILBREAK_ATTACKS[row["attack"]].format(request=row["request"])
    trained_on = (tiny_world / "sft/train.jsonl").read_text()
    assert not any(row["prompt"] in trained_on for row in rows)
