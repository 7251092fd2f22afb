"""Our lm-eval tasks resolve offline and score a local checkpoint through lm-eval's Python API."""

import os

from llm_recipes.evaluation import lm_eval_scores


def test_passkey_tasks_score_a_local_checkpoint(tiny_world, tiny_tokenizer, tmp_path, monkeypatch, repo_root):
    # The tasks read runs/tiny/data/eval/*.jsonl from the working directory, as the tiny chain lays it out.
    (tmp_path / "runs/tiny").mkdir(parents=True)
    os.symlink(tiny_world, tmp_path / "runs/tiny/data")
    monkeypatch.chdir(tmp_path)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer)
    config = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, vocab_size=len(tokenizer), max_position_embeddings=1024,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")

    results = lm_eval_scores(str(tmp_path / "model"), ["tiny_passkey"], include_path=str(repo_root / "tasks/tiny"),
                             batch_size=8, limit=2)
    assert set(results) >= {"tiny_passkey_40w", "tiny_passkey_400w"}
    assert results["tiny_passkey_40w"]["exact_match,none"] == 0.0  # an untrained model cannot know the key
