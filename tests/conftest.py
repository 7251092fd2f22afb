import importlib.util
import os
import sys
from pathlib import Path

# No test may reach the Hub; the libraries read these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist each of the two workers gets one core: torch, and every stage a test launches (accelerate
# keeps OMP_NUM_THREADS when it is set), use one thread, so two trainings never fight over both cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """Import `scripts/<name>.py` as a module, so tests call its `main` and dataclasses directly."""
    path = REPO_ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A free TCP port on the loopback, so that a distributed job or a server started by a test cannot clash with
    another one on the machine."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_small_llama(tokenizer_path, out: Path, max_position_embeddings: int = 256, seed: int = 0) -> Path:
    """An untrained 2-layer Llama (hidden size 64) with the tokenizer at `tokenizer_path`, saved to `out` as a
    checkpoint the stage scripts start from."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_recipes.model import model_config_from_recipe

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    architecture = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                        max_position_embeddings=max_position_embeddings)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(model_config_from_recipe(architecture, tokenizer)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def save_tiny_policy(tokenizer_path, out: Path, seed: int = 0) -> Path:
    """An untrained 1-layer Llama (hidden size 32) with the tokenizer at `tokenizer_path`: a policy that RL tests
    train on a toy reward in a few steps."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, vocab_size=len(tokenizer), max_position_embeddings=256,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                  bos_token_id=None, tie_word_embeddings=True)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def pytest_collection_modifyitems(config, items):
    """The tiny chain first: under xdist its worker starts it at once, while the other works through the rest."""
    items.sort(key=lambda item: item.path.name != "test_tiny_chain.py")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """A small tiny world (a few hundred pages), generated once per test session."""
    from llm_recipes.tiny_world import TinyWorldConfig, generate_tiny_world

    out = tmp_path_factory.mktemp("tiny_world")
    generate_tiny_world(out, TinyWorldConfig(seed=0, scale=0.1))
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_world, tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer trained by scripts/train_tokenizer.py on the small tiny world."""
    out = tmp_path_factory.mktemp("tokenizer")
    recipe = out / "tokenizer.yaml"
    recipe.write_text(
        f"output_dir: {out}\nvocab_size: 512\nchat_template: recipes/templates/chatml.jinja\n"
        f"dataset_mixture:\n  datasets: [{tiny_world}/raw/web.jsonl]\n"
        f"  eval_datasets: [{tiny_world}/raw/web_heldout.jsonl]\n"
    )
    load_script("train_tokenizer").main(["--config", str(recipe)])
    return out
