"""bench/compute_floor.py: the FLOPs per token it charges a stage's model, dense and mixture of experts."""

import importlib.util
from pathlib import Path

from transformers import AutoConfig

REPO = Path(__file__).resolve().parents[1]


def load_compute_floor():
    spec = importlib.util.spec_from_file_location("compute_floor", REPO / "bench/compute_floor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dense_model_counts_every_weight_once_and_the_tied_head_as_a_matmul():
    floor = load_compute_floor()
    config = AutoConfig.for_model(**floor.TINY_MODEL)
    n, per_token = floor.flops_per_token(config, sequence_length=128)
    d, ffn, layers, kv = 128, 512, 4, 64
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * ffn + 2 * d          # q, o; k, v; gate, up, down; two norms
    assert n == layers * per_layer + d + 1334 * d                     # final norm; the tied LM head
    assert per_token == 6 * n + 12 * layers * d * 128


def test_mixture_of_experts_counts_only_the_experts_a_token_meets():
    floor = load_compute_floor()
    moe = AutoConfig.for_model(**{**floor.TINY_MODEL, "model_type": "qwen3_moe", "num_experts": 8,
                                  "num_experts_per_tok": 2, "moe_intermediate_size": 256, "head_dim": 32})
    n_moe, _ = floor.flops_per_token(moe, sequence_length=128)
    d, layers = 128, 4
    experts_met = 2 * 3 * d * 256                                     # 2 of 8 experts, each gate, up, down
    router, qk_norms = 8 * d, 2 * 32
    attention_and_norms = d * d * 2 + d * 64 * 2 + 2 * d
    assert n_moe == layers * (attention_and_norms + qk_norms + router + experts_met) + d + 1334 * d
