"""After train.py: the reference-evaluator table, the capmoe loader check, README.md.

    python finalize.py --model bench/models/mixtral-like --capmoe /tmp/capmoe-base

Reads MODEL/train_summary.json (written by train.py), runs eval_ref on
MODEL/eval.jsonl for none and drop:score / drop:order at gamma 1.0, 1.5, 2.0,
compares `capmoe logits --json` against transformers on a few ids, and
writes MODEL/eval_ref.json and MODEL/README.md.
"""

import argparse
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402
import eval_ref  # noqa: E402
import train  # noqa: E402


def capmoe_check(binary, model_dir, model, tok):
    """Max |logit diff| between capmoe's loader and transformers on one example."""
    ex = eval_ref.load_examples(os.path.join(model_dir, "eval.jsonl"))[0]
    ids = tok.encode(ex["prompt"] + ex["answer"] + "\n").ids
    cmd = [binary, "logits", "--model", model_dir, "--ids", ",".join(map(str, ids)), "--json"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        return {"command": " ".join(cmd), "error": run.stderr.strip()}
    got = torch.tensor(json.loads(run.stdout)["logits"])
    for layer in model.model.layers:  # HF's own MoE forward for this comparison
        layer.mlp.__dict__.pop("forward", None)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids]), output_router_logits=False).logits[0]
    return {
        "command": " ".join(cmd[:4]) + " --ids <" + str(len(ids)) + " ids> --json",
        "positions": len(ids),
        "max_abs_diff": (got - ref).abs().max().item(),
        "max_abs_logit": ref.abs().max().item(),
        "argmax_agree": bool((got.argmax(-1) == ref.argmax(-1)).all()),
    }


def eval_slice(binary, model_dir):
    """A small slice of `capmoe eval` for tests/eval_cli.rs to reproduce: MODEL/eval-slice.json."""
    spec = {"limit": 120, "rows": 2, "seq_len": 128}  # small: the test runs a debug build
    cmd = [binary, "eval", "--model", model_dir, "--limit", "120", "--rows", "2", "--seq-len", "128",
           "--policies", "drop:score", "--capacity-factors", "1.0", "--format", "json"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {run.stderr.strip()}")
    res = json.loads(run.stdout)["results"]
    spec["runs"] = [{"policy": r["policy"], "gamma": r["gamma"], "scored": r["scored"],
                     "accuracy": r["accuracy"]} for r in res]
    with open(os.path.join(model_dir, "eval-slice.json"), "w") as f:
        json.dump(spec, f, indent=1)
        f.write("\n")
    return spec


def task_table(r):
    lines = ["| task | accuracy | correct / scored |", "|---|---|---|"]
    for t, a in r["per_task"].items():
        c, n = r["per_task_counts"][t]
        lines.append(f"| {t} | {a:.3f} | {c} / {n} |")
    lines.append(f"| **all** | **{r['accuracy']:.3f}** | {sum(c for c, _ in r['per_task_counts'].values())}"
                 f" / {r['scored']} |")
    return "\n".join(lines)


def readme(name, s, results, check):
    none = results[0]
    a = s["args"]
    cfg = json.load(open(os.path.join(s["out"], "config.json")))
    mix = ", ".join(f"{t} {w}" for t, w in corpus.TRAIN_MIX.items())
    loads = " / ".join(f"{x:.2f}" for x in none["load_max_over_mean_per_forward"])
    loads_total = " / ".join(f"{x:.2f}" for x in none["load_max_over_mean"])
    cap = (f"`{check['command']}` loads the checkpoint; on {check['positions']} positions its logits differ "
           f"from transformers' by at most {check['max_abs_diff']:.2e} (largest |logit| "
           f"{check['max_abs_logit']:.1f}); argmax agrees everywhere: {check['argmax_agree']}."
           if "error" not in check else f"`{check['command']}` failed: {check['error']}")
    chain, p = [], s
    while p:
        chain.insert(0, p)
        p = p.get("previous")
    commands = "\n".join(f"nice -n 5 python {p['command']}" for p in chain)
    phases = []
    for i, p in enumerate(chain):
        cpu = f", {p['cpu_minutes']} min of CPU time" if p.get("cpu_minutes") else ""
        start = "from scratch" if i == 0 else "from the previous phase's saved checkpoint (new AdamW state)"
        phases.append(f"- Phase {i + 1}, {start}: {p['steps']} steps in {p['train_minutes']} min wall-clock{cpu}; "
                      f"best validation checkpoint at step {p['best_step']} kept.")
    phases = "\n".join(phases)
    logs = ", ".join(f"`{x}`" for x in sorted(os.listdir(s["out"])) if x.endswith(".log"))
    return f"""# {name}

A small Mixtral-format MoE (`MixtralForCausalLM`) trained from scratch on the generated
multi-task corpus of `tools/train/corpus.py`, so that capacity policies can be judged on real
accuracy and on routing skew the router learned by itself (design.md section 8).

## Model

- {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, {cfg['num_attention_heads']} heads
  ({cfg['num_key_value_heads']} KV heads, head_dim {cfg['head_dim']}), RoPE theta {cfg['rope_theta']:g},
  {cfg['num_local_experts']} experts, top-{cfg['num_experts_per_tok']}, expert intermediate
  {cfg['intermediate_size']}, SwiGLU.
- {s['params_total']:,} parameters ({s['params_active']:,} active per token); bf16 safetensors with the
  hub tensor names (`block_sparse_moe.experts.N.w1/w2/w3`).
- Vocabulary: {cfg['vocab_size']} tokens, one per character (newline = id 0, printable ASCII 32..126 =
  ids 1..95, `<unk>` = 96), in `tokenizer.json` (a BPE model with no merges, Fuse decoder).
  The newline that ends every answer is the EOS token.

## How it was made

```
cd tools/train
{commands}
python finalize.py --model ../../bench/models/{name} --capmoe <capmoe binary>
```

- torch {torch.__version__}, transformers {__import__('transformers').__version__}, one CPU thread
  (two trainings shared a 2-core machine with other jobs), seed {a['seed']}.
- Corpus: training examples from seed {train.TRAIN_SEED}, task weights {mix} (a phase's `--mix`
  overrides some, as its command shows); validation (best-checkpoint
  choice) seed {train.VAL_SEED}, 600 examples; `eval.jsonl` seed {train.EVAL_SEED}, {none['examples']}
  examples, tasks uniform. Some small tasks (2-digit addition, short bracket strings) have few distinct
  prompts, so eval prompts can also occur in training; the answers still have to be computed.
- Loss: cross-entropy on answer tokens and the closing newline, plus HF Mixtral's router aux loss
  with `router_aux_loss_coef` {a['aux_coef']}; no other balance or skew term. AdamW (peak lr and
  warmup per phase as in the commands, then cosine to 10 % of the peak over the phase's wall-clock
  budget), weight decay {a['weight_decay']}, batch {a['batch']} x {a['seq_len']} tokens at random
  stream offsets.
{phases}
- Training logs: {logs}.

## Held-out accuracy (the saved bf16 checkpoint, plain top-k)

Protocol of design.md section 8 (rows of 128 tokens, 16 rows per forward), `eval.jsonl`:

{task_table(none)}

Answer-token NLL {none['answer_nll']:.4f} (perplexity {none['answer_ppl']:.3f}).

Routing skew learned (busiest expert's top-k load over the mean, layers 0..{len(none['load_max_over_mean']) - 1}):
per forward of 2048 tokens, averaged: {loads}; over the whole eval set: {loads_total}.

## PyTorch reference evaluator

`python tools/train/eval_ref.py --model bench/models/{name}` (transformers for attention and norms,
routing and capacity written from design.md section 3: C = ceil(gamma * T * k / E) over the
T = 2048 tokens of a forward, Mixtral weights computed before dropping, no renormalisation;
a token that loses all experts keeps only its residual). Load columns: per-forward max/mean of the
top-k demand, per layer.

{eval_ref.markdown_table(results)}

Gate mass kept / tokens left with no expert: {'; '.join(f"{r['policy']} {r['gamma']}: {r['gate_mass_kept']:.3f} / {r['tokens_without_expert_pct']:.2f} %" for r in results[1:])}.

## capmoe loader check

{cap}
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--capmoe", help="a capmoe binary for the loader check")
    ap.add_argument("--policies", default="none,drop:score,drop:order")
    ap.add_argument("--capacity-factors", default="1.0,1.5,2.0")
    args = ap.parse_args()
    torch.set_num_threads(1)
    name = os.path.basename(os.path.normpath(args.model))
    path = os.path.join(args.model, "config.json")
    with open(path) as f:
        cfg = train.clean_config(json.load(f))
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    with open(os.path.join(args.model, "train_summary.json")) as f:
        s = json.load(f)
    s["out"] = args.model
    model, tok = eval_ref.load(args.model)
    state = eval_ref.patch_model(model)
    examples = eval_ref.load_examples(os.path.join(args.model, "eval.jsonl"))
    encode = lambda x: tok.encode(x).ids  # noqa: E731
    results = []
    gammas = [float(g) for g in args.capacity_factors.split(",")]
    for pol, g in eval_ref.runs(args.policies.split(","), gammas):
        results.append(eval_ref.evaluate(model, state, examples, encode, 16, 128, pol, g))
        print(f"{pol} {g}: {results[-1]['accuracy']:.4f}", flush=True)
    with open(os.path.join(args.model, "eval_ref.json"), "w") as f:
        json.dump({"results": results}, f, indent=1)
    check = capmoe_check(args.capmoe, args.model, model, tok) if args.capmoe else {
        "command": "(not run)", "error": "no --capmoe binary given"}
    print(json.dumps(check))
    if args.capmoe:
        print("eval-slice:", json.dumps(eval_slice(args.capmoe, args.model)))
    with open(os.path.join(args.model, "README.md"), "w") as f:
        f.write(readme(name, s, results, check))
    print(eval_ref.markdown_table(results))


if __name__ == "__main__":
    main()
