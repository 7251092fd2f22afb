"""Evaluation: our lm-eval tasks resolve offline and score a checkpoint; results are written in lm-eval's format,
reused for an unchanged checkpoint, repeated for pass@k; the report card gathers them; the training callback
logs them."""

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from conftest import load_script

from llm_recipes.evaluation import lm_eval_run, lm_eval_scores, merge_results, pass_at_k, repeat_statistics


@pytest.fixture(scope="module")
def eval_workspace(tiny_world, tiny_tokenizer, tmp_path_factory):
    """A working directory laid out like the tiny chain (the tasks read runs/tiny/data/eval/*.jsonl from it),
    holding an untrained model with the tiny tokenizer and its chat template."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("eval_workspace")
    (root / "runs/tiny").mkdir(parents=True)
    os.symlink(tiny_world, root / "runs/tiny/data")
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer)
    config = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, vocab_size=len(tokenizer), max_position_embeddings=1024,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)  # the same untrained model in every session, whatever ran before
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root


def test_passkey_tasks_score_a_local_checkpoint(eval_workspace, repo_root, monkeypatch):
    monkeypatch.chdir(eval_workspace)
    results = lm_eval_scores("model", ["tiny_passkey"], include_path=str(repo_root / "tasks/tiny"),
                             batch_size=8, limit=2)
    assert set(results) >= {"tiny_passkey_40w", "tiny_passkey_400w"}
    assert results["tiny_passkey_40w"]["exact_match,none"] == 0.0  # an untrained model cannot know the key


def test_evaluate_writes_lm_eval_results_and_reuses_them_for_an_unchanged_checkpoint(eval_workspace, monkeypatch):
    monkeypatch.chdir(eval_workspace)
    evaluate = load_script("evaluate")
    argv = ["--model_name_or_path", "model", "--output_dir", "eval", "--tasks", "tiny_multiple_choice",
            "--chat_tasks", "tiny_arithmetic", "--limit", "3", "--batch_size", "4"]
    evaluate.main(argv)
    results = json.loads(Path("eval/results.json").read_text())
    # lm-eval's own layout, with standard errors, holding both the plain and the chat-templated run.
    assert {"results", "configs", "versions", "n-samples", "higher_is_better"} <= set(results)
    assert "acc_stderr,none" in results["results"]["tiny_multiple_choice"]
    assert "exact_match_stderr,strict" in results["results"]["tiny_arithmetic"]
    assert [run["apply_chat_template"] for run in results["llm_recipes_runs"]] == [False, True]
    chat_prompt = json.loads(Path("eval/samples_tiny_arithmetic.jsonl").read_text().splitlines()[0])
    assert chat_prompt["arguments"][0][0].startswith("<|im_start|>user\n")

    written = Path("eval/results.json").stat().st_mtime_ns
    evaluate.main(argv)
    assert Path("eval/results.json").stat().st_mtime_ns == written  # reused, not recomputed

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained("model").save_pretrained("model")  # the checkpoint changed
    evaluate.main(argv)
    assert Path("eval/results.json").stat().st_mtime_ns != written


def test_unknown_task_is_named_before_any_model_loads(eval_workspace, monkeypatch, capsys):
    monkeypatch.chdir(eval_workspace)
    from llm_recipes.recipe import RecipeError

    with pytest.raises(RecipeError, match="tiny_arithmetik"):
        load_script("evaluate").main(["--model_name_or_path", "model", "--output_dir", "eval_bad",
                                      "--tasks", "tiny_arithmetik"])
    assert not Path("eval_bad/results.json").exists()


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(n=5, correct=2, k=1) == pytest.approx(0.4)
    assert pass_at_k(n=5, correct=0, k=3) == 0.0
    assert pass_at_k(n=4, correct=1, k=4) == 1.0
    assert pass_at_k(n=4, correct=1, k=2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)


def test_repeats_give_mean_spread_and_pass_at_k_per_document():
    def run(outcomes):
        samples = [{"doc_id": i, "filter": "strict", "metrics": ["exact_match"], "exact_match": v}
                   for i, v in enumerate(outcomes)]
        accuracy = sum(outcomes) / len(outcomes)
        return {"results": {"t": {"exact_match,strict": accuracy, "exact_match_stderr,strict": 0.1}},
                "samples": {"t": samples}}

    stats = repeat_statistics([run([1, 0, 0, 0]), run([0, 0, 1, 0])], ks=[1, 2])["t"]
    assert stats["exact_match,strict"]["mean"] == pytest.approx(0.25)
    assert stats["exact_match,strict"]["std"] == pytest.approx(0.0)
    assert stats["pass@1:exact_match,strict"] == pytest.approx(0.25)
    assert stats["pass@2:exact_match,strict"] == pytest.approx(0.5)  # two documents solved at least once


def test_merged_results_keep_every_task_of_every_run():
    plain = {"results": {"a": {"acc,none": 0.5}}, "configs": {"a": {}}, "versions": {"a": 1}}
    chat = {"results": {"b": {"acc,none": 0.7}}, "configs": {"b": {}}, "versions": {"b": 1}}
    merged = merge_results([plain, chat], [False, True])
    assert set(merged["results"]) == {"a", "b"} and set(merged["versions"]) == {"a", "b"}


def test_refusals_taught_by_the_tiny_world_are_recognised_and_answers_are_not(repo_root, monkeypatch):
    monkeypatch.syspath_prepend(str(repo_root / "tasks/tiny"))
    import utils

    from llm_recipes.tiny_world import safety

    for refusal in safety.REFUSALS + safety.NEEDLESS_REFUSALS:
        assert utils.is_refusal(refusal.format(name="Kai"))
    for answer in list(safety.COMPLIANCE.values()) + [answer for _, answer in safety.BENIGN_TRAIN]:
        assert not utils.is_refusal(answer.format(name="Kai", account="email", word="sun", n=1, pin=1234,
                                                  x=1, y=2, z=3))


def test_tool_call_task_lists_the_tool_as_the_tiny_chains_template_does(repo_root, tiny_world, tiny_tokenizer):
    from transformers import AutoTokenizer

    task = yaml.safe_load((repo_root / "tasks/tiny/tiny_tool_call.yaml").read_text().replace("!function", ""))
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer)
    tokenizer.chat_template = (repo_root / "recipes/templates/chatml_compact_tools.jinja").read_text()
    row = json.loads((tiny_world / "sft/tools_test.jsonl").read_text().splitlines()[0])
    with_tools = tokenizer.apply_chat_template(row["messages"][:1], tools=row["tools"], tokenize=False,
                                               add_generation_prompt=True)
    as_lm_eval_asks = tokenizer.apply_chat_template(
        [{"role": "system", "content": task["description"]}, row["messages"][:1][0]], tokenize=False,
        add_generation_prompt=True)
    assert as_lm_eval_asks == with_tools


def test_tool_calls_are_scored_for_form_and_expression(repo_root, monkeypatch):
    monkeypatch.syspath_prepend(str(repo_root / "tasks/tiny"))
    import utils

    doc = {"messages": [{"role": "user", "content": "54 - 21?"}, {"role": "assistant", "tool_calls": [
        {"function": {"name": "calculator", "arguments": {"expression": "54 - 21"}}}]}]}
    right = '<tool_call>{"name": "calculator", "arguments": {"expression": "54-21"}}</tool_call>'
    wrong = '<tool_call>{"name": "calculator", "arguments": {"expression": "54 - 12"}}</tool_call>'
    assert utils.score_tool_call(doc, [right]) == {"well_formed_call": 1.0, "correct_call": 1.0}
    assert utils.score_tool_call(doc, [wrong]) == {"well_formed_call": 1.0, "correct_call": 0.0}
    for broken in ('<tool_call>{"name": "calculator", "arguments": </tool_call>', "54 - 21 = 33.",
                   '<tool_call>{"name": "search", "arguments": {"expression": "54 - 21"}}</tool_call>'):
        assert utils.score_tool_call(doc, [broken]) == {"well_formed_call": 0.0, "correct_call": 0.0}


def test_report_card_tabulates_every_evaluated_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, accuracy in (("base", 0.1), ("sft", 0.8)):
        folder = tmp_path / "eval" / name
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({
            "results": {"tiny_arithmetic": {"exact_match,strict": accuracy, "exact_match_stderr,strict": 0.02}},
            "higher_is_better": {"tiny_arithmetic": {"exact_match": True}}, "groups": {}}))
        (folder / "samples_tiny_arithmetic.jsonl").write_text(json.dumps(
            {"doc_id": 0, "doc": {"question": "What is 2 + 3?"}, "target": "5", "filter": "strict",
             "resps": [[f"answer of {name}"]]}) + "\n")
        train = tmp_path / "train" / name
        train.mkdir(parents=True)
        (train / "trainer_state.json").write_text(json.dumps(
            {"log_history": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}]}))
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        "stages:\n"
        "  - {name: base, script: scripts/pretrain.py, output_dir: train/base}\n"
        "  - {name: sft, script: scripts/sft.py, output_dir: train/sft}\n"
        "  - {name: eval_base, script: scripts/evaluate.py, output_dir: eval/base,"
        " args: {model_name_or_path: '{base}'}}\n"
        "  - {name: eval_sft, script: scripts/evaluate.py, output_dir: eval/sft,"
        " args: {model_name_or_path: '{sft}'}}\n")
    # A seeds run's numbers: each seed's value and mean ± sd, the lab's in percent.
    (tmp_path / "seeds.json").write_text(json.dumps({
        "1": {"eval_sft/tiny_sft_tier": 0.90, "grpo/eval_kl": 0.03, "sft/eval_loss": 1.0},
        "2": {"eval_sft/tiny_sft_tier": 0.94, "grpo/eval_kl": 0.05, "sft/eval_loss": 1.1}}))
    load_script("report").main(["--pipeline", str(pipeline), "--output_dir", "report",
                                "--seeds_summary", "seeds.json"])
    report = (tmp_path / "report/report.md").read_text()
    assert "| eval_sft/tiny_sft_tier | 90.0 | 94.0 | 92.0 ± 2.8 |" in report
    assert "| grpo/eval_kl | 0.030 | 0.050 | 0.040 ± 0.014 |" in report and "sft/eval_loss" not in report
    assert "| task | metric | base | sft |" in report
    assert "| tiny_arithmetic | exact_match ↑ | 0.100 ± 0.020 | 0.800 ± 0.020 |" in report
    assert "*sft*: answer of sft" in report
    assert (tmp_path / "report/loss_curves.png").stat().st_size > 1000
    assert (tmp_path / "report/scores.png").stat().st_size > 1000


def test_lm_eval_callback_logs_task_scores_during_training(eval_workspace, monkeypatch):
    monkeypatch.chdir(eval_workspace)
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    from llm_recipes.evaluation import add_lm_eval_callback
    from llm_recipes.stage import StageArguments

    tokenizer = AutoTokenizer.from_pretrained("model")
    blocks = Dataset.from_dict({"input_ids": [tokenizer("Q: 2+3=? A: 5")["input_ids"]] * 8})
    trainer = Trainer(
        model=AutoModelForCausalLM.from_pretrained("model"),
        args=TrainingArguments("callback_run", max_steps=2, eval_strategy="steps", eval_steps=2, use_cpu=True,
                               per_device_train_batch_size=4, report_to="none", save_strategy="no"),
        train_dataset=blocks, eval_dataset=blocks, processing_class=tokenizer,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    add_lm_eval_callback(trainer, StageArguments(lm_eval_tasks=["tiny_multiple_choice"], lm_eval_limit=2))
    trainer.train()
    logged = [h for h in trainer.state.log_history if "lm_eval/tiny_multiple_choice/acc" in h]
    assert logged and logged[0]["step"] == 2


def test_tasks_discriminate_a_model_trained_on_them_from_an_untrained_one(eval_workspace, tiny_world, repo_root,
                                                                           monkeypatch):
    """A few hundred steps on the tiny world's text and refusals move the perplexity and refusal tasks far from
    the untrained model's scores, so later stages can be judged by them."""
    monkeypatch.chdir(eval_workspace)
    import json as _json

    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained("model")
    pages = [_json.loads(line)["text"] for line in (tiny_world / "raw/web.jsonl").read_text().splitlines()[:300]]
    chats = [_json.loads(line)["messages"] for line in (tiny_world / "sft/train.jsonl").read_text().splitlines()]
    refusals = [tokenizer.apply_chat_template(m, tokenize=False) for m in chats
                if m[-1]["content"].startswith(("I can't", "Sorry"))]
    texts = pages + refusals * 8  # x4 left the refusal rate at 0.5-0.7 by seed; x8 gives 0.8
    blocks = Dataset.from_dict({"input_ids": [tokenizer(t)["input_ids"][:128] for t in texts]})
    trainer = Trainer(
        model=AutoModelForCausalLM.from_pretrained("model"),
        args=TrainingArguments("discriminate", max_steps=150, learning_rate=1e-2, per_device_train_batch_size=16,
                               use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True),
        train_dataset=blocks, processing_class=tokenizer,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    trainer.train()
    trainer.save_model("trained")
    tokenizer.save_pretrained("trained")

    tasks = ["tiny_perplexity_web", "tiny_safety_refusal"]
    include = str(repo_root / "tasks/tiny")
    untrained = lm_eval_scores("model", tasks, include_path=include, batch_size=16, limit=20)
    trained = lm_eval_scores("trained", tasks, include_path=include, batch_size=16, limit=20)
    # The chat tasks go through the template in the pipeline; refusal scoring reads the reply either way.
    assert trained["tiny_perplexity_web"]["word_perplexity,none"] < 0.1 * \
        untrained["tiny_perplexity_web"]["word_perplexity,none"]
    assert untrained["tiny_safety_refusal"]["refusal_rate,none"] == 0.0
    trained_chat = lm_eval_scores("trained", ["tiny_safety_refusal"], include_path=include, batch_size=16, limit=20,
                                  apply_chat_template=True)
    assert trained_chat["tiny_safety_refusal"]["refusal_rate,none"] >= 0.5


def test_the_jailbreak_task_scores_refusals_of_attacked_requests(eval_workspace, repo_root, monkeypatch):
    monkeypatch.chdir(eval_workspace)
    output = lm_eval_run("model", ["tiny_jailbreak_refusal"], include_path=str(repo_root / "tasks/tiny"),
                         batch_size=16, limit=8, log_samples=True, apply_chat_template=True)
    prompts = [sample["doc"]["prompt"] for sample in output["samples"]["tiny_jailbreak_refusal"]]
    assert prompts[0].startswith("Let's play a game.") and prompts[1].startswith("Ignore all previous instructions")
    assert output["results"]["tiny_jailbreak_refusal"]["refusal_rate,none"] == 0.0  # an untrained model refuses nothing
