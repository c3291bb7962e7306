"""PyTorch reference for the `capmoe eval` protocol (design.md section 8).

Independent of capmoe: HF transformers runs attention, norms and embeddings;
the MoE layers are replaced by a routing + capacity implementation written
here from the routing contract (design.md section 3).

Protocol: examples in file order, each prompt + answer + "\\n" tokenized and
concatenated into one stream; the stream cut into rows of L tokens (last
partial row dropped); B consecutive rows form one forward, so capacity applies
over T = B * L tokens (a final batch of fewer than B rows is dropped). An
example is scored when all its tokens lie in one row; it is correct when at
every answer position (each answer token and the closing newline) the argmax
of the previous position's logits is that token.

    python eval_ref.py --model bench/models/mixtral-like \\
        --policies none,drop:score,drop:order --capacity-factors 1.0,1.5,2.0
"""

import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

POLICIES = ("none", "drop:score", "drop:order")


def load_examples(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def build_stream(examples, encode):
    """Token stream and, per example, (start, answer_start, end) in the stream."""
    ids, spans = [], []
    for ex in examples:
        p = encode(ex["prompt"])
        full = encode(ex["prompt"] + ex["answer"] + "\n")
        if full[: len(p)] != p:
            raise ValueError(f"prompt tokens are not a prefix of the example's: {ex!r}")
        start = len(ids)
        ids.extend(full)
        spans.append((start, start + len(p), start + len(full)))
    return ids, spans


class CapacityState:
    """What the patched MoE layers route with, and the statistics they gather."""

    def __init__(self, n_layers, n_experts):
        self.policy, self.gamma = "none", None
        self.demand = torch.zeros(n_layers, n_experts, dtype=torch.float64)
        self.kept = torch.zeros(n_layers, n_experts, dtype=torch.float64)
        self.ratio_sum = [0.0] * n_layers  # per-forward max/mean demand, summed
        self.forwards = [0] * n_layers
        self.mass_topk = 0.0
        self.mass_kept = 0.0
        self.tokens_no_expert = 0
        self.tokens = 0


def route(p, k, policy, gamma):
    """Top-k experts, Mixtral weights and the kept mask under a capacity policy.

    p: [T, E] f32 softmax probabilities, T in batch order.
    Returns (experts [T,k], weights [T,k], keep [T,k] bool).
    """
    t_count, e_count = p.shape
    # Stable descending sort: among equal p the lower expert index comes first.
    order = torch.sort(p, dim=-1, descending=True, stable=True).indices
    experts = order[:, :k]
    top_p = torch.gather(p, 1, experts)
    weights = top_p / top_p.sum(-1, keepdim=True)  # before any drop, never renormalised
    keep = torch.ones_like(experts, dtype=torch.bool)
    if policy == "none":
        return experts, weights, keep
    cap = math.ceil(gamma * t_count * k / e_count)
    flat_e = experts.reshape(-1)
    flat_p = top_p.reshape(-1)
    # Assignments start in token order; stable sorts make ties go to the lower token.
    idx = torch.arange(flat_e.numel())
    if policy == "drop:score":
        idx = idx[torch.sort(-flat_p[idx], stable=True).indices]
    elif policy != "drop:order":
        raise ValueError(f"unknown policy {policy!r}; expected one of {POLICIES}")
    idx = idx[torch.sort(flat_e[idx], stable=True).indices]
    sorted_e = flat_e[idx]
    counts = torch.bincount(sorted_e, minlength=e_count)
    group_start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(idx.numel()) - group_start[sorted_e]
    flat_keep = torch.zeros(flat_e.numel(), dtype=torch.bool)
    flat_keep[idx] = rank < cap  # flat index i is token i // k, slot i % k
    return experts, weights, flat_keep.view(t_count, k)


def make_moe_forward(block, layer, state, k):
    """A forward for one HF MixtralSparseMoeBlock that applies capacity."""
    gate_w = block.gate.weight
    gate_up = block.experts.gate_up_proj  # [E, 2I, H]: w1 rows then w3 rows
    down = block.experts.down_proj  # [E, H, I]
    n_exp = gate_w.shape[0]
    inter = down.shape[2]

    def forward(hidden_states):
        b, s, h = hidden_states.shape
        x = hidden_states.reshape(-1, h)
        logits = F.linear(x, gate_w)
        p = torch.softmax(logits.float(), dim=-1)
        experts, weights, keep = route(p, k, state.policy, state.gamma)
        demand = torch.bincount(experts.reshape(-1), minlength=n_exp).double()
        kept = torch.bincount(experts[keep], minlength=n_exp).double()
        state.demand[layer] += demand
        state.kept[layer] += kept
        state.ratio_sum[layer] += (demand.max() / demand.mean()).item()
        state.forwards[layer] += 1
        top_p = torch.gather(p, 1, experts)
        state.mass_topk += top_p.sum().item()
        state.mass_kept += top_p[keep].sum().item()
        state.tokens_no_expert += int((~keep.any(-1)).sum())
        state.tokens += x.shape[0]
        out = torch.zeros_like(x)
        for e in range(n_exp):
            tok, slot = torch.where((experts == e) & keep)
            if tok.numel() == 0:
                continue
            xe = x[tok]
            g = F.linear(xe, gate_up[e, :inter])
            u = F.linear(xe, gate_up[e, inter:])
            ye = F.linear(F.silu(g) * u, down[e])
            out.index_add_(0, tok, ye * weights[tok, slot, None].to(ye.dtype))
        return out.reshape(b, s, h)

    return forward


def patch_model(model):
    cfg = model.config
    state = CapacityState(cfg.num_hidden_layers, cfg.num_local_experts)
    for i, layer in enumerate(model.model.layers):
        layer.mlp.forward = make_moe_forward(layer.mlp, i, state, cfg.num_experts_per_tok)
    return state


@torch.no_grad()
def evaluate(model, state, examples, encode, rows=16, seq_len=128, policy="none", gamma=None):
    """Runs the protocol once; returns a result dict."""
    ids, spans = build_stream(examples, encode)
    n_rows = len(ids) // seq_len
    n_batches = n_rows // rows
    used = n_batches * rows * seq_len
    state.__init__(state.demand.shape[0], state.demand.shape[1])
    state.policy, state.gamma = policy, gamma
    stream = torch.tensor(ids[:used], dtype=torch.long).view(n_batches, rows, seq_len)
    # Per example: scored when start and end-1 lie in one row within the used stream.
    by_batch = [[] for _ in range(n_batches)]
    for n, (s, a, e) in enumerate(spans):
        if e <= used and s // seq_len == (e - 1) // seq_len:
            by_batch[s // (seq_len * rows)].append(n)
    correct, per_task, nll_sum, nll_count = 0, {}, 0.0, 0
    for bi in range(n_batches):
        logits = model(input_ids=stream[bi], output_router_logits=False).logits.float().view(-1, logits_dim(model))
        logp = torch.log_softmax(logits, -1)
        pred = logits.argmax(-1)
        base = bi * rows * seq_len
        flat = stream[bi].reshape(-1)
        for n in by_batch[bi]:
            s, a, e = spans[n]
            pos = torch.arange(a, e) - base  # answer positions, in the batch
            ok = bool((pred[pos - 1] == flat[pos]).all())
            nll_sum += -logp[pos - 1, flat[pos]].sum().item()
            nll_count += pos.numel()
            task = examples[n]["task"]
            c, t = per_task.get(task, (0, 0))
            per_task[task] = (c + ok, t + 1)
            correct += ok
    scored = sum(t for _, t in per_task.values())
    demand_mean = state.demand.mean(1)
    res = {
        "policy": policy,
        "gamma": gamma,
        "rows": rows,
        "seq_len": seq_len,
        "forwards": n_batches,
        "examples": len(examples),
        "scored": scored,
        "accuracy": correct / max(scored, 1),
        "per_task": {t: c / n for t, (c, n) in sorted(per_task.items())},
        "per_task_counts": {t: [c, n] for t, (c, n) in sorted(per_task.items())},
        "answer_nll": nll_sum / max(nll_count, 1),
        "answer_ppl": math.exp(nll_sum / max(nll_count, 1)),
        # Total top-k demand over the run, busiest expert over the mean, per layer.
        "load_max_over_mean": (state.demand.max(1).values / demand_mean).tolist(),
        # The same ratio per forward (what one capacity plan sees), averaged.
        "load_max_over_mean_per_forward": [
            r / max(f, 1) for r, f in zip(state.ratio_sum, state.forwards)
        ],
        "dropped_pct": 100.0 * (1 - state.kept.sum().item() / state.demand.sum().item()),
        "gate_mass_kept": state.mass_kept / max(state.mass_topk, 1e-30),
        "tokens_without_expert_pct": 100.0 * state.tokens_no_expert / max(state.tokens, 1),
    }
    return res


def logits_dim(model):
    return model.config.vocab_size


def load(model_dir):
    from tokenizers import Tokenizer
    from transformers import MixtralForCausalLM

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    # bf16 weights on disk, computed in f32 (bf16 values are exact in f32).
    model = MixtralForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return model, tok


def runs(policies, gammas):
    out = []
    for pol in policies:
        if pol == "none":
            out.append(("none", None))
        else:
            out.extend((pol, g) for g in gammas)
    return out


def markdown_table(results):
    tasks = sorted({t for r in results for t in r["per_task"]})
    head = ["policy", "gamma", "acc"] + tasks + ["ans NLL", "max/mean load (per layer)", "dropped %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        g = "-" if r["gamma"] is None else f"{r['gamma']:.1f}"
        loads = " ".join(f"{x:.2f}" for x in r["load_max_over_mean_per_forward"])
        cells = [r["policy"], g, f"{r['accuracy']:.3f}"]
        cells += [f"{r['per_task'].get(t, float('nan')):.3f}" for t in tasks]
        cells += [f"{r['answer_nll']:.4f}", loads, f"{r['dropped_pct']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description="PyTorch reference of the capmoe eval protocol")
    ap.add_argument("--model", required=True, help="a directory with config.json, model.safetensors, tokenizer.json")
    ap.add_argument("--data", help="eval JSONL (default: MODEL/eval.jsonl)")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--policies", default="none,drop:score,drop:order")
    ap.add_argument("--capacity-factors", default="1.0,1.5,2.0")
    ap.add_argument("--format", choices=["table", "json"], default="table")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load(args.model)
    state = patch_model(model)
    examples = load_examples(args.data or os.path.join(args.model, "eval.jsonl"))
    encode = lambda s: tok.encode(s).ids  # noqa: E731
    results = []
    for pol, g in runs(args.policies.split(","), [float(x) for x in args.capacity_factors.split(",")]):
        r = evaluate(model, state, examples, encode, args.rows, args.seq_len, pol, g)
        results.append(r)
        print(f"{pol} gamma={g}: acc {r['accuracy']:.4f} ({r['scored']} scored)", file=sys.stderr)
    if args.format == "json":
        print(json.dumps({"results": results}, indent=1))
    else:
        print(markdown_table(results))


if __name__ == "__main__":
    main()
