"""Deployment: an exported model is merged, quantized, measured, carded and (dry-run) pushed; it chats in the
terminal and answers over HTTP from a CPU server on loopback."""

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
import yaml
from conftest import REPO_ROOT, free_port, load_script, save_small_llama
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_recipes import hub
from llm_recipes.recipe import RecipeError

QUESTION, ANSWER = "What is 21 + 38?", "21 + 38 = 59. The answer is 59."
FAKE_TOKEN = "hf_thisIsNotARealTokenButMustNeverBeWritten"


@pytest.fixture(scope="module")
def workspace(tiny_world, tmp_path_factory):
    """A folder laid out like the tiny chain: the lm-eval tasks read runs/tiny/data/eval/*.jsonl from it."""
    root = tmp_path_factory.mktemp("export")
    (root / "runs/tiny").mkdir(parents=True)
    os.symlink(tiny_world, root / "runs/tiny/data")
    return root


@contextlib.contextmanager
def inside(folder):
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


@pytest.fixture(scope="module")
def answering_model(tiny_tokenizer, workspace):
    """A small model fine-tuned (scripts/sft.py) until it answers one question, with a dry-run push of its stage."""
    save_small_llama(tiny_tokenizer, workspace / "base")
    chat = {"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]}
    (workspace / "chat.jsonl").write_text((json.dumps(chat) + "\n") * 64)
    recipe = workspace / "sft.yaml"
    recipe.write_text(yaml.safe_dump({
        "output_dir": str(workspace / "sft"), "model_name_or_path": str(workspace / "base"),
        "chat_template_path": str(REPO_ROOT / "recipes/templates/chatml.jinja"), "eos_token": "<|im_end|>",
        "assistant_only_loss": True, "max_length": 128,
        "dataset_mixture": {"datasets": [{"path": str(workspace / "chat.jsonl")}]},
        "use_cpu": True, "bf16": False, "activation_checkpointing": False, "seed": 0, "max_steps": 60,
        "per_device_train_batch_size": 8, "learning_rate": 3.0e-3, "warmup_steps": 5, "logging_steps": 20,
        "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
        "hub_model_id": "someone/tiny-sft", "hub_revision": "sft", "hub_dry_run": True,
    }))
    os.environ["HF_TOKEN"] = FAKE_TOKEN  # present, as on a user's machine: nothing may write it anywhere
    try:
        load_script("sft").main(["--config", str(recipe)])
    finally:
        del os.environ["HF_TOKEN"]
    return workspace / "sft"


def export_recipe(workspace, model, output_dir, **extra):
    path = workspace / f"{output_dir.name}.yaml"
    path.write_text(yaml.safe_dump({
        "output_dir": str(output_dir), "model_name_or_path": str(model), "quantization": "int8_weight_only",
        "eval_task": "tiny_arithmetic", "eval_metric": "exact_match,strict", "eval_limit": 8,
        "max_score_drop": 0.0, "speed_new_tokens": 8, "speed_prompt": QUESTION,
        "hub_model_id": "someone/tiny-chat", "hub_revision": "export", "hub_dry_run": True, **extra,
    }))
    return ["--config", str(path)]


@pytest.fixture(scope="module")
def exported(answering_model, workspace):
    with inside(workspace):
        load_script("export").main(export_recipe(workspace, answering_model, workspace / "exported"))
    return workspace / "exported"


def greedy_reply(folder, question=QUESTION) -> str:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_the_fine_tuned_model_answers_its_question(answering_model):
    assert greedy_reply(answering_model) == ANSWER  # else the checks below would prove nothing


def test_quantized_export_is_smaller_reloads_with_from_pretrained_and_answers_the_same(exported):
    summary = json.loads((exported / "stage_complete.json").read_text())
    assert summary["size_bytes"] < 0.6 * summary["size_bytes_before"]
    assert summary["tokens_per_second"] > 0 and summary["tokens_per_second_before"] > 0
    assert summary["score"] >= summary["score_before"] - summary["max_score_drop"]
    model = AutoModelForCausalLM.from_pretrained(exported)
    assert "Int8" in type(model.model.layers[0].mlp.up_proj.weight).__name__
    assert greedy_reply(exported) == ANSWER
    assert list(exported.glob("*.safetensors")) and not list(exported.glob("*.bin"))


def test_every_stage_writes_a_model_card_with_hub_metadata_and_its_lineage(answering_model, exported):
    sft_card = (answering_model / "README.md").read_text()
    metadata = yaml.safe_load(sft_card.split("---")[1])
    assert metadata["license"] == "apache-2.0" and metadata["pipeline_tag"] == "text-generation"
    assert set(metadata["tags"]) >= {"llm-recipes", "sft"}
    card = (exported / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["model-index"][0]["results"][0]["metrics"][0]["type"] == "exact_match"
    lineage = json.loads((exported / "lineage.json").read_text())
    assert [entry["stage"] for entry in lineage] == ["checkpoint", "sft", "export"]
    assert lineage[1]["datasets"] == [f"{answering_model.parent.name}/chat.jsonl (local)"]
    assert "datasets" not in metadata  # no Hub dataset in the lineage
    assert "| 1 | sft |" in card and "## Export" in card and "int8_weight_only" in card


def test_cards_and_uploads_hold_no_local_path_and_no_token(answering_model, exported, workspace):
    for folder in (answering_model, exported):
        assert str(workspace) not in (folder / "README.md").read_text()
    for dry_run in (f"{answering_model}-hub-dry-run", f"{exported}-hub-dry-run"):
        for path in [p for p in (workspace / dry_run).rglob("*") if p.is_file()]:
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path


def test_dry_run_writes_exactly_the_folder_that_would_be_uploaded(answering_model):
    dry_run = answering_model.parent / f"{answering_model.name}-hub-dry-run"
    uploaded = sorted(str(p.relative_to(dry_run)) for p in dry_run.rglob("*") if p.is_file())
    assert uploaded == hub.upload_plan(answering_model)
    assert "model.safetensors" in uploaded and "README.md" in uploaded and "lineage.json" in uploaded
    assert not [name for name in uploaded if name.endswith((".bin", ".pt", ".pkl")) or "checkpoint-" in name]
    calls = json.loads((dry_run.parent / f"{dry_run.name}.hub_calls.json").read_text())
    assert [c["call"] for c in calls] == ["create_repo", "create_branch", "upload_folder"]
    assert calls[0] == {"call": "create_repo", "repo_id": "someone/tiny-sft", "private": True, "exist_ok": True}
    assert calls[1]["branch"] == "sft" and calls[2]["revision"] == "sft" and calls[2]["files"] == uploaded


def test_push_calls_huggingface_hub_with_the_repo_branch_and_privacy(exported, monkeypatch):
    made = []

    class RecordingApi:
        def __init__(self, token=None):
            made.append(("HfApi", token))

        def create_repo(self, repo_id, **kwargs):
            made.append(("create_repo", repo_id, kwargs))

        def create_branch(self, repo_id, **kwargs):
            made.append(("create_branch", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            made.append(("upload_folder", kwargs["repo_id"], kwargs))

    monkeypatch.setattr(hub, "HfApi", RecordingApi)
    assert hub.push_folder(exported, "someone/tiny-chat", revision="v1", private=True) is None
    assert made[0] == ("HfApi", None)  # the token is huggingface_hub's to find (HF_TOKEN or the login)
    assert made[1] == ("create_repo", "someone/tiny-chat", {"private": True, "exist_ok": True})
    assert made[2] == ("create_branch", "someone/tiny-chat", {"branch": "v1", "exist_ok": True})
    upload = made[3][2]
    assert upload["folder_path"] == str(exported) and upload["revision"] == "v1"
    assert "checkpoint-*" in upload["ignore_patterns"] and "*.bin" in upload["ignore_patterns"]


def test_an_export_whose_score_falls_beyond_the_bound_is_refused_and_nothing_is_published(
        answering_model, workspace, monkeypatch):
    export = load_script("export")
    scores = iter([(0.50, 0.05), (0.40, 0.05)])
    monkeypatch.setattr(export, "score", lambda folder, args: next(scores))
    output_dir = workspace / "refused"
    with pytest.raises(RecipeError, match="fell from 0.500 to 0.400"):
        export.main(export_recipe(workspace, answering_model, output_dir, max_score_drop=0.05))
    assert not output_dir.exists() and not (workspace / "refused-hub-dry-run").exists()
    assert json.loads((workspace / "refused.refused.json").read_text())["score"] == 0.40
    assert not [p for p in workspace.iterdir() if p.name.startswith(".refused.")]  # no work folder left


def test_a_lora_adapter_is_merged_into_its_base(tiny_tokenizer, answering_model, workspace):
    from peft import LoraConfig, PeftModel, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(answering_model)
    torch.manual_seed(0)
    adapter = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    adapter.save_pretrained(workspace / "adapter")
    load_script("export").main(export_recipe(
        workspace, answering_model, workspace / "merged", adapter_name_or_path=str(workspace / "adapter"),
        quantization="none", eval_task=None, hub_dry_run=False))
    merged = AutoModelForCausalLM.from_pretrained(workspace / "merged")
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(answering_model), workspace / "adapter")
    ids = AutoTokenizer.from_pretrained(workspace / "merged")(QUESTION, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, reference(ids).logits, atol=1e-4, rtol=1e-4)
    assert not (workspace / "merged" / "adapter_config.json").exists()


def test_bitsandbytes_without_a_gpu_is_refused_before_loading(answering_model, workspace):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RecipeError, match="needs a CUDA GPU"):
        load_script("export").main(export_recipe(workspace, answering_model, workspace / "bnb",
                                                 quantization="bnb_4bit"))
    assert not (workspace / "bnb").exists()


def test_chat_streams_replies_through_the_chat_template(exported):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts/chat.py"), "--model_name_or_path", str(exported),
                             "--max_new_tokens", "24"], input=f"{QUESTION}\n/reset\n{QUESTION}\n/exit\n",
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count(f"model> {ANSWER}") == 2 and "(conversation reset)" in result.stdout


def test_cpu_server_answers_a_question_over_http_on_loopback(exported):
    port = free_port()
    server = subprocess.Popen(["transformers", "serve", str(exported), "--host", "127.0.0.1", "--port", str(port),
                               "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              executable=os.path.join(os.path.dirname(sys.executable), "transformers"))
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions", headers={"Content-Type": "application/json"},
            data=json.dumps({"model": str(exported), "messages": [{"role": "user", "content": QUESTION}],
                             "max_tokens": 24}).encode())
        deadline, reply = time.time() + 180, None
        while reply is None and time.time() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    reply = json.loads(response.read())
            except OSError:
                time.sleep(1)  # not listening yet
        assert reply is not None, server.stderr.read()[-2000:] if server.poll() is not None else "no answer in 180 s"
        assert reply["choices"][0]["message"]["content"].strip() == ANSWER
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_regression_against_the_previous_release_is_refused_and_nothing_is_published(exported, answering_model,
                                                                                        workspace):
    summary = json.loads((exported / "stage_complete.json").read_text())
    release = {"results": {"tiny_arithmetic": {"exact_match,strict": summary["score"] + 0.5,
                                               "exact_match_stderr,strict": 0.01}}}
    (workspace / "release_v1.json").write_text(json.dumps(release))
    output_dir = workspace / "regressed"
    with inside(workspace), pytest.raises(RecipeError, match="regression: tiny_arithmetic exact_match,strict: .* "
                                                             "against .* nothing was published"):
        load_script("export").main(export_recipe(workspace, answering_model, output_dir,
                                                 baseline_results=str(workspace / "release_v1.json")))
    assert not output_dir.exists() and not (workspace / "regressed-hub-dry-run").exists()
    assert (workspace / "regressed.refused.json").is_file()


def test_an_honest_re_export_passes_the_gate_against_its_own_release(exported, answering_model, workspace):
    # A release folder carries its results (results.json, lm-eval's form): it is the baseline of the next release.
    assert json.loads((exported / "results.json").read_text())["results"]["tiny_arithmetic"]
    with inside(workspace):
        load_script("export").main(export_recipe(workspace, answering_model, workspace / "re_exported",
                                                 baseline_results=str(exported)))
    assert json.loads((workspace / "re_exported" / "stage_complete.json").read_text())["baseline_results"]
