"""Trains a small MixtralForCausalLM on the corpus of corpus.py, char-level.

    nice -n 5 python train.py --preset mixtral-like --budget-min 60 \\
        --out ../../bench/models/mixtral-like

Loss: cross-entropy on the answer tokens and the closing newline (the prompt
is random, so its tokens carry no learnable signal) plus HF Mixtral's router
aux loss (output_router_logits, router_aux_loss_coef). Nothing else shapes the
routing. Rows are 128-token windows at random offsets of the packed stream,
as in the eval protocol (rows start mid-example). The LR schedule runs on
progress = max(step / max_steps, elapsed / budget), so a wall-clock budget
still ends with a decayed LR; the best validation checkpoint is saved in bf16.
"""

import argparse
import copy
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402
import eval_ref  # noqa: E402

PRESETS = {
    # E=8, top-2, intermediate 3.5 x hidden.
    "mixtral-like": dict(hidden=128, layers=4, heads=4, kv_heads=2, experts=8, topk=2, inter=448),
    # DeepSeekMoE-style fine-grained split of mixtral-like: each expert cut in
    # 4 (E=32, intermediate 112) and 4x as many active (k=8): same total and
    # active parameters.
    "fine-grained": dict(hidden=128, layers=4, heads=4, kv_heads=2, experts=32, topk=8, inter=112),
}

UNK = "<unk>"
TRAIN_SEED, VAL_SEED, EVAL_SEED = 1, 2, 3


def vocab():
    """One token per character: newline, printable ASCII, then <unk>."""
    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    return {c: i for i, c in enumerate(chars + [UNK])}


def make_tokenizer(v):
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import BPE

    # BPE with no merges splits text into single characters; Fuse joins them back.
    tok = Tokenizer(BPE(vocab=v, merges=[], unk_token=UNK))
    tok.decoder = decoders.Fuse()
    return tok


def check_tokenizer(path, v):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    for ex in corpus.examples(99, 200):
        text = ex["prompt"] + ex["answer"] + "\n"
        ids = tok.encode(text).ids
        assert ids == [v[c] for c in text], (text, ids)
        assert tok.decode(ids) == text, (text, tok.decode(ids))
    text = "any printable text: {~}\n"
    assert tok.decode(tok.encode(text).ids) == text
    return tok


def encode_stream(examples, v):
    """Token ids and the loss mask (1 where the target is an answer token or the newline)."""
    ids, mask = [], []
    for ex in examples:
        p, a = ex["prompt"], ex["answer"] + "\n"
        ids.extend(v[c] for c in p + a)
        mask.extend([0] * len(p) + [1] * len(a))
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.float32)


def build_model(args, n_vocab):
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(
        vocab_size=n_vocab,
        hidden_size=args.hidden,
        intermediate_size=args.inter,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads,
        num_local_experts=args.experts,
        num_experts_per_tok=args.topk,
        max_position_embeddings=args.seq_len,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        sliding_window=None,
        tie_word_embeddings=False,
        output_router_logits=False,  # training asks for them per call
        router_aux_loss_coef=args.aux_coef,
        router_jitter_noise=0.0,
        bos_token_id=None,
        eos_token_id=0,  # the newline that ends every answer
        pad_token_id=None,
        initializer_range=0.02,
    )
    torch.manual_seed(args.seed)
    model = MixtralForCausalLM(cfg)
    model.config._experts_implementation = args.experts_impl
    return model


def count_params(model, cfg):
    total = sum(p.numel() for p in model.parameters())
    expert = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    active = total - expert + expert * cfg.num_experts_per_tok // cfg.num_local_experts
    return total, active


def lr_at(step, progress, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def validate(model, examples, encode):
    state = eval_ref.patch_model(model)
    try:
        r = eval_ref.evaluate(model, state, examples, encode, rows=16, seq_len=128)
    finally:
        for layer in model.model.layers:
            del layer.mlp.forward  # back to HF's own MoE forward
    return r


# HF bookkeeping that says nothing about a causal LM's shape.
CONFIG_DROP = (
    "_experts_implementation", "experts_implementation", "transformers_version", "_name_or_path",
    "id2label", "label2id", "chunk_size_feed_forward", "is_encoder_decoder", "problem_type",
    "return_dict", "output_attentions", "output_hidden_states", "torch_dtype",
)


def clean_config(d):
    """config.json as the hub writes Mixtral's, readable by HF v4 and v5 and by capmoe."""
    d = {k: v for k, v in d.items() if k not in CONFIG_DROP}
    d["architectures"] = ["MixtralForCausalLM"]
    d["dtype"] = "bfloat16"
    d["torch_dtype"] = "bfloat16"  # the v4 spelling
    rope = d.get("rope_parameters") or {}
    if "rope_theta" in rope:
        d["rope_theta"] = rope["rope_theta"]  # v4 reads it at the top level
    return d


def save_checkpoint(model, out, tok, args, v):
    """bf16 safetensors with the Mixtral hub tensor names, as capmoe and HF v4/v5 load them."""
    from safetensors.torch import save_file

    os.makedirs(out, exist_ok=True)
    cfg = model.config
    tensors = {}
    for name, t in model.state_dict().items():
        t = t.detach().to(torch.bfloat16).contiguous()
        if name.endswith("mlp.experts.gate_up_proj"):
            pre = name[: -len("mlp.experts.gate_up_proj")] + "block_sparse_moe.experts."
            for e in range(cfg.num_local_experts):
                tensors[f"{pre}{e}.w1.weight"] = t[e, : cfg.intermediate_size].clone()
                tensors[f"{pre}{e}.w3.weight"] = t[e, cfg.intermediate_size :].clone()
        elif name.endswith("mlp.experts.down_proj"):
            pre = name[: -len("mlp.experts.down_proj")] + "block_sparse_moe.experts."
            for e in range(cfg.num_local_experts):
                tensors[f"{pre}{e}.w2.weight"] = t[e].clone()
        else:
            tensors[name.replace(".mlp.gate.", ".block_sparse_moe.gate.")] = t
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(clean_config(cfg.to_dict()), f, indent=2, sort_keys=True)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": v["\n"], "do_sample": False, "max_new_tokens": 16}, f, indent=2)
    tok.save(os.path.join(out, "tokenizer.json"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-min", type=float, default=60.0)
    ap.add_argument("--max-steps", type=int, default=100000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--aux-coef", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-examples", type=int, default=1_000_000)
    ap.add_argument("--eval-examples", type=int, default=2000)
    ap.add_argument("--val-every-s", type=float, default=240.0)
    ap.add_argument("--mix", default="", help="training task weights over corpus.TRAIN_MIX, e.g. kv=4,add=2")
    ap.add_argument("--init", help="continue from this saved checkpoint (weights only, new optimizer)")
    ap.add_argument("--experts-impl", default="eager", help="HF experts implementation for training")
    for k in PRESETS["mixtral-like"]:
        ap.add_argument("--" + k.replace("_", "-"), type=int)
    args = ap.parse_args()
    for k, val in PRESETS[args.preset].items():
        if getattr(args, k) is None:
            setattr(args, k, val)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    t_start = time.time()

    v = vocab()
    tok = make_tokenizer(v)
    os.makedirs(args.out, exist_ok=True)
    tok.save(os.path.join(args.out, "tokenizer.json"))
    check_tokenizer(os.path.join(args.out, "tokenizer.json"), v)
    encode = lambda s: [v.get(c, v[UNK]) for c in s]  # noqa: E731

    mix = dict(corpus.TRAIN_MIX)
    for item in filter(None, args.mix.split(",")):
        task, _, w = item.partition("=")
        if task not in mix or not w:
            raise SystemExit(f"--mix {item!r}: expected TASK=WEIGHT with TASK one of {', '.join(mix)}")
        mix[task] = float(w)
    print("train mix: " + " ".join(f"{t} {w:g}" for t, w in mix.items()))
    train_ids, train_mask = encode_stream(corpus.examples(TRAIN_SEED, args.train_examples, mix), v)
    val_examples = list(corpus.examples(VAL_SEED, 600))
    eval_examples = list(corpus.examples(EVAL_SEED, args.eval_examples))
    with open(os.path.join(args.out, "eval.jsonl"), "w") as f:
        for ex in eval_examples:
            f.write(json.dumps(ex) + "\n")

    previous = None
    if args.init:
        from transformers import MixtralForCausalLM

        model = MixtralForCausalLM.from_pretrained(args.init, dtype=torch.float32,
                                                   experts_implementation=args.experts_impl)
        prev_path = os.path.join(args.init, "train_summary.json")
        if os.path.exists(prev_path):
            with open(prev_path) as f:
                previous = json.load(f)
                previous = {k: previous.get(k) for k in (
                    "command", "steps", "best_step", "train_minutes", "cpu_minutes", "accuracy", "previous")}
        print(f"continuing from {args.init} (weights only)")
    else:
        model = build_model(args, len(v))
    cfg = model.config
    total, active = count_params(model, cfg)
    print(f"preset {args.preset}: hidden {cfg.hidden_size}, layers {cfg.num_hidden_layers}, "
          f"heads {cfg.num_attention_heads}/{cfg.num_key_value_heads}, E {cfg.num_local_experts}, "
          f"k {cfg.num_experts_per_tok}, intermediate {cfg.intermediate_size}, vocab {cfg.vocab_size}")
    print(f"params: {total:,} total, {active:,} active; train stream {train_ids.numel():,} tokens; "
          f"aux coef {args.aux_coef}; lr {args.lr}; batch {args.batch}x{args.seq_len}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98), eps=1e-8,
    )
    gen = torch.Generator().manual_seed(args.seed + 1)
    budget_s = args.budget_min * 60
    best, best_key, last_val = None, None, time.time()
    if args.init:  # the starting weights compete for "best"
        model.eval()
        r = validate(model, val_examples, encode)
        model.train()
        best_key, best = (r["accuracy"], -r["answer_nll"]), (0, copy.deepcopy(model.state_dict()))
        print(f"  val of the starting weights: acc {r['accuracy']:.4f} nll {r['answer_nll']:.4f}", flush=True)
    step, ce_avg, aux_avg = 0, None, None
    t_train, cpu0 = time.time(), time.process_time()
    model.train()
    while True:
        elapsed = time.time() - t_train
        progress = max(step / args.max_steps, elapsed / budget_s)
        if progress >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, progress, args)
        off = torch.randint(0, train_ids.numel() - args.seq_len - 1, (args.batch,), generator=gen)
        idx = off[:, None] + torch.arange(args.seq_len + 1)[None]
        x, y, m = train_ids[idx[:, :-1]], train_ids[idx[:, 1:]], train_mask[idx[:, 1:]]
        out = model(input_ids=x, output_router_logits=True)
        ce = (F.cross_entropy(out.logits.float().reshape(-1, cfg.vocab_size), y.reshape(-1),
                              reduction="none") * m.reshape(-1)).sum() / m.sum()
        loss = ce + args.aux_coef * out.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        ce_avg = ce.item() if ce_avg is None else 0.98 * ce_avg + 0.02 * ce.item()
        aux_avg = out.aux_loss.item() if aux_avg is None else 0.98 * aux_avg + 0.02 * out.aux_loss.item()
        if step % 50 == 0:
            el = time.time() - t_train
            print(f"step {step} {el / 60:.1f} min: answer CE {ce_avg:.4f}, aux {aux_avg:.4f}, "
                  f"lr {opt.param_groups[0]['lr']:.2e}, {step * args.batch * args.seq_len / el:,.0f} tok/s",
                  flush=True)
        final = time.time() - t_train + 5 >= budget_s or step >= args.max_steps
        if time.time() - last_val >= args.val_every_s or final:
            model.eval()
            r = validate(model, val_examples, encode)
            model.train()
            key = (r["accuracy"], -r["answer_nll"])
            tasks = " ".join(f"{t} {a:.2f}" for t, a in r["per_task"].items())
            print(f"  val step {step}: acc {r['accuracy']:.4f} nll {r['answer_nll']:.4f} | {tasks} | "
                  f"load max/mean {' '.join(f'{x:.2f}' for x in r['load_max_over_mean_per_forward'])}",
                  flush=True)
            if best_key is None or key > best_key:
                best_key, best = key, (step, copy.deepcopy(model.state_dict()))
            last_val = time.time()
    train_s = time.time() - t_train
    cpu_min = (time.process_time() - cpu0) / 60
    print(f"trained {step} steps in {train_s / 60:.1f} min ({step * args.batch * args.seq_len:,} tokens); "
          f"best val at step {best[0]}: acc {best_key[0]:.4f}; CPU time {cpu_min:.1f} min", flush=True)

    model.load_state_dict(best[1])
    save_checkpoint(model, args.out, tok, args, v)
    summary = final_eval(args.out, model)
    summary.update(
        preset=args.preset, params_total=total, params_active=active, steps=step, best_step=best[0],
        train_minutes=round(train_s / 60, 2), cpu_minutes=round(cpu_min, 2), previous=previous,
        wall_minutes=round((time.time() - t_start) / 60, 2),
        command=" ".join(sys.argv), args=vars(args),
    )
    with open(os.path.join(args.out, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps({k: summary[k] for k in ("accuracy", "per_task", "load_max_over_mean_per_forward")}))


def final_eval(out, trained):
    """Reloads the saved bf16 checkpoint through HF and scores eval.jsonl under `none`."""
    model, tok = eval_ref.load(out)
    encode = lambda s: tok.encode(s).ids  # noqa: E731
    examples = eval_ref.load_examples(os.path.join(out, "eval.jsonl"))
    # HF's own forward on the reloaded file against the bf16-rounded trained weights.
    x = torch.tensor([encode("".join(e["prompt"] + e["answer"] + "\n" for e in examples[:8]))[:128]])
    ref = copy.deepcopy(trained).eval()
    for p in ref.parameters():  # parameters only: RoPE's inv_freq buffer stays f32
        p.data = p.data.to(torch.bfloat16).float()
    with torch.no_grad():
        diff = (model(input_ids=x).logits - ref(input_ids=x).logits).abs().max().item()
    print(f"reloaded bf16 checkpoint vs in-memory bf16-rounded model: max |logit diff| {diff:.2e}")
    state = eval_ref.patch_model(model)
    with torch.no_grad():
        patched = model(input_ids=x).logits
        mine = (patched - ref(input_ids=x).logits).abs().max().item()
    print(f"eval_ref MoE (policy none) vs HF MoE forward: max |logit diff| {mine:.2e}")
    r = eval_ref.evaluate(model, state, examples, encode)
    print(f"held-out ({len(examples)} examples, {r['scored']} scored), bf16 checkpoint, policy none: "
          f"accuracy {r['accuracy']:.4f}, answer NLL {r['answer_nll']:.4f}")
    for t, a in r["per_task"].items():
        c, n = r["per_task_counts"][t]
        print(f"  {t:9s} {a:.4f} ({c}/{n})")
    print("  load max/mean per layer (per forward): "
          + " ".join(f"{x:.2f}" for x in r["load_max_over_mean_per_forward"]))
    r["logit_diff_reload"] = diff
    r["logit_diff_eval_ref_vs_hf"] = mine
    return r


if __name__ == "__main__":
    main()
