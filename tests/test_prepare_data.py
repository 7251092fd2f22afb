"""Data preparation removes what the tiny world planted in its web crawl, and keeps everything else.

The stage runs once, with the repository's tiny recipe, on the session's small tiny world; every test scores its
output against the world's manifest of planted defects.
"""

import gzip
import json
import re

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO_ROOT, load_script

from llm_recipes.data import DatasetSource, load_source
from llm_recipes.recipe import RecipeError, RecipeParser

PLACEHOLDERS = {"email": "<EMAIL>", "phone": "<PHONE>", "ip": "<IP>"}


def tiny_recipe(world, output_dir) -> str:
    """recipes/tiny/prepare_data.yaml, reading `world` and writing to `output_dir`."""
    text = (REPO_ROOT / "recipes/tiny/prepare_data.yaml").read_text()
    return text.replace("runs/tiny/data/", f"{world}/").replace("runs/tiny/prepared", str(output_dir))


def read_output(output_dir, folder: str = "data") -> dict[str, dict]:
    rows = {}
    for shard in sorted((output_dir / folder).glob("*.jsonl.gz")):
        with gzip.open(shard, "rt") as f:
            rows.update((row["id"], row) for row in map(json.loads, f))
    return rows


@pytest.fixture(scope="module")
def prepared(tiny_world, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("prepared")
    recipe = tmp_path_factory.mktemp("recipe") / "prepare_data.yaml"
    recipe.write_text(tiny_recipe(tiny_world, output_dir))
    load_script("prepare_data").main(["--config", str(recipe)])
    return output_dir


@pytest.fixture(scope="module")
def kept(prepared) -> dict[str, dict]:
    return read_output(prepared)


@pytest.fixture(scope="module")
def manifest(tiny_world) -> dict:
    return json.loads((tiny_world / "manifest.json").read_text())["web"]


def duplicate_families(manifest) -> dict[str, set[str]]:
    """Each original page with all its exact and near copies."""
    families = {}
    for entry in manifest["exact_duplicates"] + manifest["near_duplicates"]:
        families.setdefault(entry["original_id"], {entry["original_id"]}).add(entry["id"])
    return families


def test_exact_duplicates_leave_one_copy_of_each_page(manifest, kept):
    groups = {}
    for entry in manifest["exact_duplicates"]:
        groups.setdefault(entry["original_id"], {entry["original_id"]}).add(entry["id"])
    assert groups
    for original, group in groups.items():
        assert len(group & kept.keys()) <= 1, f"exact copies of {original} kept: {sorted(group & kept.keys())}"
    # MinHash may keep a near copy instead of the page itself; one document of each family stays either way.
    for original, family in duplicate_families(manifest).items():
        assert len(family & kept.keys()) == 1, f"{original}: kept {sorted(family & kept.keys())}"


def test_near_duplicates_are_removed_with_high_recall(manifest, kept):
    pairs = manifest["near_duplicates"]
    caught = sum(1 for pair in pairs if not {pair["id"], pair["original_id"]} <= kept.keys())
    recall = caught / len(pairs)
    assert recall >= 0.9, f"near-duplicate recall {recall:.2f}"


def test_pii_is_replaced_by_placeholders_and_its_pages_kept(manifest, kept):
    for planted in manifest["pii"]:
        page = kept.get(planted["id"])
        assert page is not None, f"PII page {planted['id']} was dropped"
        assert planted["value"] not in page["text"]
        assert PLACEHOLDERS[planted["kind"]] in page["text"]
    values = [planted["value"] for planted in manifest["pii"]]
    assert not any(value in row["text"] for row in kept.values() for value in values)


def test_placeholders_appear_only_where_pii_was(manifest, kept):
    pii_pages = {planted["id"] for planted in manifest["pii"]}
    for page_id, row in kept.items():
        if page_id not in pii_pages:
            assert not any(p in row["text"] for p in PLACEHOLDERS.values()), page_id


def test_every_contaminated_page_is_removed(manifest, kept):
    contaminated = {entry["id"] for entry in manifest["contaminated"]}
    assert contaminated and not contaminated & kept.keys()


def test_spam_pages_are_removed(manifest, kept):
    spam = set(manifest["spam"])
    removed = len(spam - kept.keys()) / len(spam)
    assert removed >= 0.9, f"only {removed:.0%} of spam removed"


def test_clean_pages_and_math_pages_are_kept(manifest, kept):
    families = duplicate_families(manifest)

    def lost(page_id):  # a page survives as itself or as one of its copies
        return not (families.get(page_id, {page_id}) & kept.keys())

    clean, math = manifest["clean"], manifest["math_pages"]
    assert math
    false_drops = sum(map(lost, clean)) / len(clean)
    assert false_drops <= 0.02, f"{false_drops:.1%} of clean pages dropped"
    assert sum(map(lost, math)) / len(math) <= 0.02


def test_documents_keep_their_id_source_url_and_license(tiny_world, kept):
    raw = {row["id"]: row for name in ("web", "web_more")
           for row in map(json.loads, (tiny_world / f"raw/{name}.jsonl").read_text().splitlines())}
    for page_id, row in kept.items():
        assert row["source"] == raw[page_id]["source"]
        assert (row["url"], row["license"]) == (raw[page_id]["url"], raw[page_id]["license"])
    # The second crawl's clean pages are the first crawl's again: deduplication keeps the first crawl's copies.
    assert {row["source"] for row in kept.values()} == {"crawl"}


def test_the_quality_classifier_removes_content_farms_that_heuristic_filters_keep(tiny_world, prepared, kept):
    """Content farms pass Gopher, C4 and FineWeb's rules; the classifier trained on the judge's labels drops them,
    and its own held-out measurement (pages it was not trained on) says so too."""
    manifest = json.loads((tiny_world / "manifest.json").read_text())
    farms = set(manifest["web_more"]["content_farm"])
    clean = set(manifest["web_more"]["clean"]) | set(manifest["web"]["clean"])
    dropped_by = {step.name: set(read_output(prepared / "dropped", step.name)) for step in
                  (prepared / "dropped").iterdir()}
    assert not farms & kept.keys()
    assert farms <= dropped_by["quality_classifier"]  # the heuristic filters before it let every one pass
    assert len(clean & dropped_by["quality_classifier"]) / len(clean) <= 0.01
    classifier = json.loads((prepared / "stage_complete.json").read_text())["quality_classifier"]
    assert classifier["held_out_bad_pages"] > 0 and classifier["recall"] >= 0.9
    assert classifier["good_pages_dropped"] <= 0.01
    # The score stays with every page, for a mixture to threshold or weight by.
    assert all(0.5 <= row["__label__clean"] <= 1 for row in kept.values())


def raw_rows(world, name: str) -> list[dict]:
    return [json.loads(line) for line in (world / "raw" / name).read_text().splitlines()]


def test_the_summary_gives_each_sources_and_domains_token_share_before_and_after(tiny_world, prepared, kept):
    """The shares count words and punctuation marks (no tokenizer exists before train_tokenizer); recounted here
    from the raw files and the written dataset, they match, and they show the content farms' crawl vanish."""
    shares = json.loads((prepared / "stage_complete.json").read_text())["mixture_shares"]
    assert shares["tokens"] == "words and punctuation marks"
    words = re.compile(r"\w+|[^\w\s]")
    read = {"crawl": raw_rows(tiny_world, "web.jsonl"), "more": raw_rows(tiny_world, "web_more.jsonl")}
    for name, rows in read.items():
        assert shares["source"][name]["documents_before"] == len(rows)
        assert shares["source"][name]["tokens_before"] == sum(len(words.findall(r["text"])) for r in rows)
        written = [r for r in kept.values() if r["source"] == name]
        assert shares["source"][name]["documents_after"] == len(written)
        # As written: after PII redaction, so "<EMAIL>" counts as a placeholder's marks and word.
        assert shares["source"][name]["tokens_after"] == sum(len(words.findall(r["text"])) for r in written)
    # Every page of the second crawl is either a re-crawled duplicate or a content farm: none is left.
    assert shares["source"]["more"]["share_before"] > 0.15 and shares["source"]["more"]["share_after"] == 0
    assert abs(sum(v["share_before"] for v in shares["source"].values()) - 1) < 1e-3
    # Domains: the hosts of the pages' URLs (`domain_key: url`), each town's site.
    hosts = {r["url"].split("/")[2] for rows in read.values() for r in rows}
    assert set(shares["domain"]) == hosts and len(hosts) > 1
    assert abs(sum(v["share_after"] for v in shares["domain"].values()) - 1) < 1e-3
    summary = (prepared / "summary.md").read_text()
    assert "Each source's share of the tokens" in summary and "Each domain's share of the tokens" in summary


def test_the_mixture_counter_counts_a_named_tokenizers_tokens(tmp_path):
    from datatrove.data import Document
    from tokenizers import Tokenizer, models, pre_tokenizers

    from llm_recipes.curation.steps import MixtureCounter

    tokenizer = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    docs = [Document("a b a", "1", metadata={"source": "x", "url": "https://one.example/p"}),
            Document("b, c", "2", metadata={"source": "y", "url": "https://two.example/q"})]
    counter = MixtureCounter(str(tmp_path / "tokenizer.json"), domain_key="url")
    assert [d.id for d in counter.run(iter(docs))] == ["1", "2"]
    counted = counter.stats.to_dict()["stats"]
    stats = {key: value["total"] if isinstance(value, dict) else value for key, value in counted.items()}
    assert stats["source=x/tokens"] == 3 and stats["source=y/tokens"] == 3  # "b" "," "c"
    assert stats["domain=one.example/characters"] == 5 and stats["domain=two.example/documents"] == 1


def test_output_loads_with_datasets_and_as_a_recipe_dataset(prepared, kept):
    loaded = datasets.load_dataset(str(prepared / "data"), split="train")
    assert len(loaded) == len(kept) and {"text", "id", "source", "url", "license"} <= set(loaded.column_names)
    texts = load_source(DatasetSource(path=str(prepared / "data")), "text")
    assert texts.column_names == ["text"] and len(texts) == len(kept)


def test_report_counts_documents_through_every_step(prepared, kept):
    summary = json.loads((prepared / "stage_complete.json").read_text())
    assert summary["documents_out"] == len(kept) and summary["documents_in"] > len(kept)
    steps = {s["step"]: s for s in summary["steps"]}
    for name in ("gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality", "decontamination",
                 "exact_dedup", "minhash_dedup"):
        assert steps[name]["in"] - steps[name]["out"] == steps[name]["dropped"]
    assert steps["exact_dedup"]["dropped"] > 0 and steps["minhash_dedup"]["dropped"] > 0
    stats = json.loads((prepared / "stats.json").read_text())
    assert {"filter", "exact_filter", "minhash_signatures", "write"} <= stats.keys()
    table = (prepared / "summary.md").read_text()
    assert "| filter | gopher_quality |" in table and "| write | minhash_dedup |" in table
    assert not (prepared / "work").exists()


def write_sources(folder, n: int):
    """Two sources of `n` distinct documents: one jsonl file, one folder of parquet."""
    folder.mkdir(parents=True)
    rows = [{"id": f"a-{i}", "text": f"Document {i} of the first source."} for i in range(n)]
    (folder / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "b").mkdir()
    pq.write_table(pa.Table.from_pylist([{"id": f"b-{i}", "text": f"Document {i} of the second source."}
                                         for i in range(n)]), folder / "b/part-0.parquet")


def prepare_unfiltered(tmp_path, sources: list[str], extra: str = "") -> dict[str, dict]:
    """Run the stage on `sources` (YAML flow mappings) with no filter, dedup or PII step; return the output."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"output_dir: {tmp_path}/out\nsources: [{', '.join(sources)}]\n"
                      f"filters: {{}}\nexact_dedup: false\nminhash: null\npii: null\n{extra}")
    load_script("prepare_data").main(["--config", str(recipe)])
    return read_output(tmp_path / "out")


def test_sources_are_mixed_by_weight(tmp_path):
    write_sources(tmp_path / "in", 600)
    output = prepare_unfiltered(tmp_path, [f"{{source: a, path: {tmp_path}/in/a.jsonl, weight: 3}}",
                                           f"{{source: b, path: {tmp_path}/in/b, weight: 1}}"])
    sources = [row["source"] for row in output.values()]
    assert sources.count("a") == 600  # the source with most documents per unit of weight is read whole
    assert sources.count("b") / len(sources) == pytest.approx(0.25, abs=0.04)


def test_hub_sources_are_read_with_datasets(tmp_path):
    write_sources(tmp_path / "in", 20)
    output = prepare_unfiltered(tmp_path, [f"{{source: b, path: {tmp_path}/in/b, format: hub, streaming: false}}"])
    assert sorted(output) == sorted(f"b-{i}" for i in range(20))


def test_a_rerun_with_another_recipe_starts_clean(tmp_path):
    write_sources(tmp_path / "in", 20)
    for source in ("a.jsonl", "b"):
        output = prepare_unfiltered(tmp_path, [f"{{source: x, path: {tmp_path}/in/{source}}}"], "write_dropped: true\n")
    assert sorted(output) == sorted(f"b-{i}" for i in range(20))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "data", "logs", "stage_complete.json", "stats.json", "summary.md"]


def test_unknown_filter_parameter_is_named_before_anything_runs(tiny_world, tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(tiny_recipe(tiny_world, tmp_path / "out").replace("min_avg_word_length:", "min_avg_word_lenght:"))
    with pytest.raises(RecipeError, match="filters.gopher_quality: unknown key 'min_avg_word_lenght'. "
                                          "Did you mean 'min_avg_word_length'?"):
        RecipeParser(load_script("prepare_data").ARGUMENTS).parse_or_raise(["--config", str(recipe)])
    with pytest.raises(SystemExit):
        load_script("prepare_data").main(["--config", str(recipe)])
    assert "min_avg_word_lenght" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_filter_parameter_of_the_wrong_type_is_refused(tiny_world, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(tiny_recipe(tiny_world, tmp_path / "out").replace("fineweb_quality: {}",
                                                                        "fineweb_quality: {short_line_thr: high}"))
    with pytest.raises(RecipeError, match="filters.fineweb_quality.short_line_thr: expects a number, got 'high'"):
        RecipeParser(load_script("prepare_data").ARGUMENTS).parse_or_raise(["--config", str(recipe)])


def test_dry_run_prints_the_stages_and_writes_nothing(tiny_world, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_recipe(tiny_world, tmp_path / "out"))
    load_script("prepare_data").main(["--config", str(recipe), "--dry_run"])
    printed = capsys.readouterr().out
    for stage in ("filter", "exact_signatures", "minhash_buckets (14 tasks)", "write"):
        assert f"stage {stage}" in printed
    assert "MinHash stage 4" in printed and "Gopher Quality" in printed
    assert not (tmp_path / "out").exists()


def test_missing_eval_set_is_named(tiny_world, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_recipe(tiny_world, tmp_path / "out").replace("eval/arithmetic.jsonl", "eval/nope.jsonl"))
    with pytest.raises(RecipeError, match=r"decontamination.eval_sets\[0\]: .*nope.jsonl not found"):
        load_script("prepare_data").main(["--config", str(recipe)])


def test_source_without_its_text_column_is_named(tiny_world, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_recipe(tiny_world, tmp_path / "out").replace("text_key: text", "text_key: body"))
    with pytest.raises(RecipeError, match=r"sources\[0\] \(crawl\): .*web.jsonl has no column 'body' \(text_key\)"):
        load_script("prepare_data").main(["--config", str(recipe)])
    assert not (tmp_path / "out").exists()


def test_slurm_recipe_builds_a_picklable_chain_of_slurm_jobs(tmp_path):
    import dill
    from datatrove.executor import SlurmPipelineExecutor

    from llm_recipes.curation import Plan

    recipe = str(REPO_ROOT / "recipes/smollm2-135m/prepare_data.yaml")
    (args,) = RecipeParser(load_script("prepare_data").ARGUMENTS).parse_or_raise(
        ["--config", recipe, "--output_dir", str(tmp_path / "out")])
    executors = Plan(args).executors()  # built, not submitted: nothing reaches the Hub or sbatch
    assert all(isinstance(e, SlurmPipelineExecutor) for e in executors)
    assert all(later.depends is earlier for earlier, later in zip(executors, executors[1:]))
    assert executors[0].partition == args.slurm["partition"] and executors[0].tasks == args.tasks
    dill.loads(dill.dumps(executors[-1]))  # what a slurm job unpickles


def test_unreadable_lines_fail_the_run_unless_skipped_and_then_they_are_counted(tmp_path):
    # A byte that is not UTF-8 in the middle of a file: datatrove alone stops reading the file there and succeeds.
    pages = [json.dumps({"id": str(i), "text": f"Page {i} is about bread and the baker."}).encode() for i in range(6)]
    source = tmp_path / "web.jsonl"
    source.write_bytes(b"\n".join(pages[:3] + [b'{"id": "bad", "text": "caf\xe9"}'] + pages[3:]) + b"\n")
    with pytest.raises(RecipeError, match=f"{source}, line 4: byte .* is not UTF-8"):
        prepare_unfiltered(tmp_path, [f"{{source: web, path: {source}}}"])
    assert not (tmp_path / "out").exists()
    rows = prepare_unfiltered(tmp_path, [f"{{source: web, path: {source}}}"], extra="skip_bad_records: true\n")
    assert sorted(rows) == [str(i) for i in range(6)]  # every readable line, the ones after the bad one too
    summary = json.loads((tmp_path / "out" / "stage_complete.json").read_text())
    assert summary["documents_skipped"] == 1 and summary["documents_in"] == 6
    assert "1 unreadable source lines were skipped" in (tmp_path / "out" / "summary.md").read_text()


def test_international_phone_numbers_and_private_addresses_are_redacted(tmp_path):
    texts = {"uk": "Ring the bakery on +44 20 7946 0958 before noon.", "de": "Die Nummer ist +49 30 901820.",
             "us": "Call (415) 555-0142 after six.", "lan": "The printer is at 192.168.1.20 on the shop network.",
             "sums": "In 2024 she added 733 + 464 = 1197 and wrote order 1234567 down."}
    source = tmp_path / "pages.jsonl"
    source.write_text("".join(json.dumps({"id": key, "text": text}) + "\n" for key, text in texts.items()))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"output_dir: {tmp_path}/out\nsources: [{{source: web, path: {source}}}]\n"
                      "filters: {}\nexact_dedup: false\nminhash: null\npii: {}\n")
    load_script("prepare_data").main(["--config", str(recipe)])
    rows = {key: row["text"] for key, row in read_output(tmp_path / "out").items()}
    assert rows["uk"] == "Ring the bakery on <PHONE> before noon." and rows["de"] == "Die Nummer ist <PHONE>."
    assert rows["us"] == "Call <PHONE> after six."
    assert rows["lan"] == "The printer is at <IP> on the shop network."
    assert rows["sums"] == texts["sums"]  # numbers that are not phone numbers stay


def test_the_fast_spacy_tokenizer_gives_datatroves_words_and_sentences(tiny_world):
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    from llm_recipes.curation.words import FastSpaCyTokenizer, fast_word_tokenizer

    pages = [row["text"] for row in raw_rows(tiny_world, "web.jsonl")[:150]]
    pages.append("Mr. Smith's e-mail is jo@x.example. He can't come (isn't it odd?)... Call +1 415-555-0199!")
    theirs, ours = load_word_tokenizer("en"), FastSpaCyTokenizer("en", renew_every=7)  # renewed mid-way too
    assert isinstance(fast_word_tokenizer("en"), FastSpaCyTokenizer)
    assert fast_word_tokenizer("en") is fast_word_tokenizer("en")  # one per language: datatrove's cache is shared
    for page in pages:
        assert ours.word_tokenize(page) == theirs.word_tokenize(page)
        assert ours.sent_tokenize(page) == theirs.sent_tokenize(page)
        assert ours.span_tokenize(page) == theirs.span_tokenize(page)


def test_the_quality_filter_scores_with_the_model_trained_last(tmp_path):
    """datatrove's filter reads a cached copy of the first model it saw at a path; ours reads the path itself."""
    import shutil
    import subprocess
    import sys

    from datatrove.data import Document

    from llm_recipes.curation.classifier import TRAIN_FASTTEXT, TrainedClassifierFilter

    # Two classifiers, one that keeps the town's pages and one that drops them, trained as the stage trains its own
    # (in a process of their own: with torch imported, as in the test workers, fastText often stops at a NaN).
    for label, other in (("clean", "content_farm"), ("content_farm", "clean")):
        train_file = tmp_path / f"{label}.txt"
        train_file.write_text("".join(f"__label__{label} page {i} about the town\n" for i in range(500))
                              + "".join(f"__label__{other} buy cheap pills {i} now\n" for i in range(500)))
        train_args = dict(epoch=5, lr=0.1, wordNgrams=2, dim=32, bucket=1000, thread=1, seed=0, verbose=0)
        subprocess.run([sys.executable, "-c", TRAIN_FASTTEXT, str(train_file), str(tmp_path / f"{label}.bin"),
                        json.dumps(train_args)], check=True)
    decisions = []
    for trained in ("clean", "content_farm"):  # the same recipe run twice, its judge labelling the town otherwise
        shutil.copy(tmp_path / f"{trained}.bin", tmp_path / "model.bin")
        step = TrainedClassifierFilter(str(tmp_path / "model.bin"), keep_labels=[("clean", 0.5)])
        decisions.append(step.filter(Document(text="a page about the town", id="0")))
    assert decisions == [True, False]


def test_the_summary_gives_each_steps_time_and_speed(prepared):
    times = json.loads((prepared / "stage_complete.json").read_text())["step_times"]
    gopher = next(t for t in times if t["step"] == "gopher_repetition")
    assert gopher["seconds"] > 0 and gopher["documents"] > 0 and gopher["documents_per_second"] > 0
    assert "Where the time went" in (prepared / "summary.md").read_text()


def test_the_fast_repetition_filter_decides_as_datatroves(tiny_world):
    import random

    from datatrove.data import Document
    from datatrove.pipeline.filters import GopherRepetitionFilter
    from datatrove.pipeline.filters.gopher_repetition_filter import (
        find_all_duplicate,
        find_top_duplicate,
        get_n_grams,
    )

    from llm_recipes.curation.repetition import FastGopherRepetitionFilter, PageNgrams
    from llm_recipes.curation.words import fast_word_tokenizer

    pages = [Document(text=row["text"], id=row["id"]) for name in ("web.jsonl", "web_more.jsonl")
             for row in raw_rows(tiny_world, name)]
    tokenizer = fast_word_tokenizer("en")
    theirs, ours = GopherRepetitionFilter(language=tokenizer), FastGopherRepetitionFilter(language=tokenizer)
    decisions = [theirs.filter(page) for page in pages]
    assert sum(decision is not True for decision in decisions) > 5  # the world's repetitive spam is caught
    assert [r for i in range(0, len(pages), 97) for r in ours.filter_batch(pages[i:i + 97])] == decisions
    # The counts themselves, on words that collide when joined without a space ("ab c" and "a bc"), on words
    # with a space (which no spaCy word has), and on pages shorter than n.
    rng = random.Random(0)
    vocabulary = ["a", "b", "ab", "ba", "c", "bc", "abc"]
    words = [[rng.choice(vocabulary[:rng.randint(2, 7)]) for _ in range(rng.randint(0, 40))] for _ in range(400)]
    words += [["a b", "c", "a", "b c", "a b", "c"], ["x y", "z"] * 3]  # spaced words: " ".join collides too
    ngrams = PageNgrams(words)
    for n in range(1, 11):
        assert ngrams.all_duplicate_chars(n) == [find_all_duplicate(w, n) for w in words]
        assert ngrams.top_duplicate_chars(n) == [find_top_duplicate(get_n_grams(w, n)) if len(w) >= n else None
                                                 for w in words]


def test_the_fast_c4_filter_decides_and_rewrites_as_datatroves(tiny_world):
    from datatrove.data import Document
    from datatrove.pipeline.filters import C4QualityFilter

    from llm_recipes.curation.c4 import FastC4QualityFilter
    from llm_recipes.curation.words import fast_word_tokenizer

    texts = [row["text"] for name in ("web.jsonl", "web_more.jsonl") for row in raw_rows(tiny_world, name)]
    # What is decided after the fifth sentence still counts: a bracket or "lorem ipsum" late in a page drops it.
    late = "One. Two. Three. Four. Five.\nSix and seven."
    texts += [late + "\nThen {x}.", late + "\nLorem ipsum dolor.", "Only one sentence here.", "", "Hi.\n\nYo"]
    tokenizer = fast_word_tokenizer("en")
    settings = [{}, {"filter_no_terminal_punct": False, "min_words_per_line": -1},  # datatrove's, the recipe's
                {"split_paragraph": False}, {"min_num_sentences": -1}]
    for kwargs in settings:
        theirs = C4QualityFilter(language=tokenizer, **kwargs)
        ours = FastC4QualityFilter(language=tokenizer, **kwargs)
        for text in texts:
            their_page, our_page = Document(text=text, id="0"), Document(text=text, id="0")
            assert ours.filter(our_page) == theirs.filter(their_page)
            assert our_page.text == their_page.text
        counts = [{key: stat.total for key, stat in step.stats.stats.items()} for step in (theirs, ours)]
        assert counts[0] == counts[1]
        assert 0 < sum(theirs.filter(Document(text=text, id="0")) is not True for text in texts) < len(texts)


def test_decontamination_names_the_same_eval_set_as_a_scan_by_first_token(tiny_world):
    """The filter looks eval n-grams up by their first few tokens; a plain scan by the first token alone, in the
    order the eval sets were read, must find the same pages and name the same set."""
    import random

    from datatrove.data import Document

    from llm_recipes.curation.config import DecontaminationSettings, EvalSet
    from llm_recipes.curation.steps import DecontaminationFilter, eval_tokens

    names = ("arithmetic", "word_problems", "three_digit", "two_step")
    eval_sets = [EvalSet(path=str(tiny_world / "eval" / f"{name}.jsonl")) for name in names]
    questions = [text for eval_set in eval_sets for text in eval_set.texts()]
    rng = random.Random(0)
    pages = [row["text"] for row in raw_rows(tiny_world, "web.jsonl")[:400]]
    pages += [f"{rng.choice(pages)[:300]} {rng.choice(questions)} {rng.choice(questions)[:40]}" for _ in range(200)]
    for n_grams, min_tokens in ((32, 5), (13, 5), (6, 3), (3, 1)):
        settings = DecontaminationSettings(eval_sets=eval_sets, n_grams=n_grams, min_tokens=min_tokens)
        starts = {}  # the scan: first token -> {length: {n-gram: label}}
        for eval_set in eval_sets:
            for text in eval_set.texts():
                tokens = eval_tokens(text)
                if len(tokens) >= min_tokens:
                    length = min(n_grams, len(tokens))
                    for i in range(len(tokens) - length + 1):
                        gram = " ".join(tokens[i:i + length])
                        starts.setdefault(tokens[i], {}).setdefault(length, {})[gram] = eval_set.label

        def scan(text, starts=starts):
            tokens = eval_tokens(text)
            for i, token in enumerate(tokens):
                for length, grams in starts.get(token, {}).items():
                    if " ".join(tokens[i:i + length]) in grams:
                        return grams[" ".join(tokens[i:i + length])]
            return None

        step = DecontaminationFilter(settings)
        expected = [scan(page) for page in pages]
        assert sum(label is not None for label in expected) >= 150
        for page, label in zip(pages, expected):
            doc = Document(text=page, id="0")
            assert step.filter(doc) == (True if label is None else (False, f"contaminated_{label}"))
            assert doc.metadata.get("contaminated_with") == label


def test_the_phone_matcher_finds_what_libphonenumbers_finds(tiny_world):
    import phonenumbers

    from llm_recipes.curation.steps import phone_number_matcher

    def found(matches):
        return [(m.start, m.end, m.raw_string) for m in matches]

    texts = [row["text"] for name in ("web.jsonl", "web_more.jsonl") for row in raw_rows(tiny_world, name)]
    # Every plan's example numbers, written nationally and internationally, among sums.
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE):
            number = phonenumbers.example_number_for_type(region, kind)
            if number is not None:
                texts.append(f"{region}: 47 + 35 = 82, call {phonenumbers.format_number(number, 0)} or "
                             f"{phonenumbers.format_number(number, 1)}, or {phonenumbers.format_number(number, 2)}.")
    assert sum(bool(found(phonenumbers.PhoneNumberMatcher(t, "US"))) for t in texts) > 200
    for region in ("US", "GB", "SM", "AR", "DE"):
        for text in texts:
            expected = found(phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID))
            assert found(phone_number_matcher(text, region)) == expected, (region, text)
