#!/usr/bin/env python3
"""Hugging Face parity fixtures for capmoe's Mixtral forward pass.

Creates a seeded random tiny Mixtral with transformers (MixtralConfig +
MixtralForCausalLM), saves it with save_pretrained
  - in f32 as one file:                      tests/fixtures/tiny-mixtral/f32/
  - in bf16 sharded (index.json + shards):   tests/fixtures/tiny-mixtral/bf16/
and writes reference outputs to tests/fixtures/tiny-mixtral/reference.json:
  - logits of the f32 model for several prompts (one longer than the
    sliding window), computed on the CPU in f32,
  - logits of the bf16 checkpoint loaded as f32 (bf16-rounded weights,
    f32 compute: what capmoe computes from the bf16 files),
  - greedy ids from model.generate (no early stop at eos).

Usage (from the repository root):
  python3 -m venv .venv-fixtures
  .venv-fixtures/bin/pip install -r tools/requirements-fixtures.txt
  .venv-fixtures/bin/python tools/make-fixtures.py
"""

import json
import os
import shutil
import sys

import torch
import transformers
from transformers import MixtralConfig, MixtralForCausalLM

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tiny-mixtral")
SEED = 20250301
PROMPTS = [
    [1, 5, 9, 3],
    [1, 100, 27, 64, 3, 3, 90],
    [1, 17, 42, 8, 99, 120, 6, 51, 77, 2, 33, 14, 101],  # 13 > sliding_window 8
]
GENERATE = [([1, 5, 9, 3], 8), ([1, 17, 42, 8, 99, 120, 6], 10)]


def config():
    return MixtralConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        sliding_window=8,
        rms_norm_eps=1e-5,
        # Larger than the default 0.02 so that activations, router logits
        # and output logits are O(1) and the parity test is sensitive.
        initializer_range=0.2,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="eager",
    )


@torch.no_grad()
def logits_of(model, prompts):
    return [model(torch.tensor([p])).logits[0].float().tolist() for p in prompts]


@torch.no_grad()
def main():
    torch.manual_seed(SEED)
    model = MixtralForCausalLM(config()).eval()
    # Non-trivial norm weights (they are initialised to ones).
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.copy_(1.0 + 0.1 * torch.randn_like(p))

    shutil.rmtree(OUT, ignore_errors=True)
    f32_dir, bf16_dir = os.path.join(OUT, "f32"), os.path.join(OUT, "bf16")
    model.save_pretrained(f32_dir, safe_serialization=True)
    bf16 = MixtralForCausalLM.from_pretrained(f32_dir, dtype=torch.bfloat16)
    bf16.save_pretrained(bf16_dir, safe_serialization=True, max_shard_size="100KB")
    shards = [f for f in os.listdir(bf16_dir) if f.endswith(".safetensors")]
    assert len(shards) >= 2 and os.path.exists(os.path.join(bf16_dir, "model.safetensors.index.json")), shards

    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    generated = []
    for prompt, n in GENERATE:
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)
        new = out[0, len(prompt):].tolist()
        assert len(new) == n
        generated.append({"prompt": prompt, "max_new_tokens": n, "generated": new})

    bf16_as_f32 = MixtralForCausalLM.from_pretrained(
        bf16_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ref = {
        "seed": SEED,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "prompts": PROMPTS,
        "logits_f32": logits_of(model, PROMPTS),
        "logits_bf16_weights": logits_of(bf16_as_f32, PROMPTS),
        "generate": generated,
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f)
    print("wrote", os.path.abspath(OUT), file=sys.stderr)


if __name__ == "__main__":
    main()
