#!/usr/bin/env python3
"""capmoe against llama.cpp on the CPU: one Mixtral checkpoint, both engines, same threads.

What it does, in order:

  1. Converts a Hugging Face Mixtral checkpoint (config.json + model.safetensors or a sharded
     model.safetensors.index.json; f32, bf16 or f16) to GGUF at f32, bf16 and Q8_0 with the
     `gguf` package: llama architecture with MoE tensors (blk.N.ffn_gate_inp, ffn_{gate,up,down}_exps),
     q/k rows permuted for llama.cpp's RoPE as convert_hf_to_gguf.py does, norms and the router
     kept in f32. The vocabulary comes from tokenizer.json when there is one (written as an SPM-type
     token list: only token ids are fed, so text tokenization in llama.cpp is not meant to match).
  2. Times llama.cpp through llama-cpp-python's low-level API (llama_batch / llama_decode):
       prefill  : P tokens in one llama_decode (as P/S sequences of S tokens when the model's
                  max_position_embeddings is below P), logits at each sequence's last position;
       decode 1 : one sequence after a prompt of C1 tokens, N greedy steps, ms/token;
       decode 8 : eight sequences (seq ids 0..7) after prompts of C8 tokens each, N greedy steps
                  of 8 tokens, ms/step.
  3. Times capmoe on the same checkpoint (`capmoe bench --device cpu --policies none --no-eval`,
     one invocation per shape, numbers read from its report.json), alternating engines round by
     round (capmoe, llama.cpp f32, bf16, Q8_0, capmoe, ...). Medians and min-max over rounds.
  4. Checks that greedy next tokens agree (`capmoe generate --ids ... --json` against llama.cpp f32).
  5. Writes results.json and results.md under --out (default bench/results/cpu-vs-llama).

Setup (once):
  python3 -m venv /work/venv-llama
  /work/venv-llama/bin/pip install -r tools/peers/llama_cpp/requirements.txt   # builds llama.cpp (CPU)
Run (from the repository root; any python3 works, the script re-runs itself under --venv):
  python3 tools/peers/llama_cpp/bench.py --model bench/models/mixtral-like
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
DEFAULT_VENV = os.environ.get("CAPMOE_LLAMA_VENV", "/work/venv-llama")
FORMATS = ("f32", "bf16", "q8_0")
DEFAULT_GGUF_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "capmoe-llama-gguf")

EPILOG = """\
shapes (all times wall-clock, both engines on --threads threads):
  prefill   --prefill-tokens P (512) tokens in one forward. A model whose max_position_embeddings
            M is below P is prefilled as P/S sequences of S = largest divisor of P that is <= M
            (capmoe: --batch P/S --seq-len S; llama.cpp: one llama_batch with P/S seq ids).
  decode b1 one sequence: a prompt of --decode-context C1 tokens, then --decode-steps N greedy steps
            (capmoe: --batch 1 --seq-len C1 --decode-steps N, its "decode ms/step").
  decode b8 eight sequences of --decode-context-b8 C8 tokens, then N steps of 8 tokens each
            (capmoe: --batch 8 --seq-len C8 --decode-steps N). C1 and C8 are cut to M - N.
  Every round runs capmoe then llama.cpp f32, bf16, Q8_0 (A B A B); one untimed warm-up round first.
  Medians over --rounds with the min-max range; ratio = llama.cpp / capmoe time (> 1: capmoe faster).

capmoe's prompt is its checkpoint's own held-out text when the checkpoint ships eval.jsonl and
tokenizer.json; llama.cpp gets the same text encoded character by character when tokenizer.json is a
merge-free (character) BPE, else seeded random ids. MoE routing, hence expert load, can differ a little.

examples:
  python3 tools/peers/llama_cpp/bench.py --model bench/models/mixtral-like
  python3 tools/peers/llama_cpp/bench.py --model bench/models/mixtral-like --rounds 3 --formats f32,q8_0
  # a bigger, meaningful shape: capmoe's `small` (hidden 1024, 8 experts top-2, vocab 32000) with
  # random weights, written as a Hugging Face checkpoint first (~1 GB f32 at 2 layers):
  python3 tools/peers/llama_cpp/bench.py --make-random small --layers 2 --model /tmp/small-random
  python3 tools/peers/llama_cpp/bench.py --model bench/models/mixtral-like --convert-only
"""



def write_atomically(path, data):
    """Writes `data` (str or bytes) to `path` through a temporary name, so an
    interrupted run never leaves a half-written file behind."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)

def die(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def ensure_python(args):
    """Re-exec under the venv's python when llama_cpp or gguf is missing here."""
    try:
        import gguf  # noqa: F401
        import numpy  # noqa: F401
        if not args.convert_only:
            import llama_cpp  # noqa: F401
        return
    except ImportError as e:
        missing = e.name
    venv_py = Path(args.venv) / "bin" / "python"
    if venv_py.exists() and os.path.abspath(sys.executable) != os.path.abspath(venv_py) and not os.environ.get("_CAPMOE_LLAMA_REEXEC"):
        os.environ["_CAPMOE_LLAMA_REEXEC"] = "1"
        os.execv(str(venv_py), [str(venv_py), __file__] + sys.argv[1:])
    req = Path(__file__).with_name("requirements.txt")
    die(
        f"python module '{missing}' is not importable by {sys.executable}, and the venv {args.venv} "
        f"{'lacks it too (or is the python that ran)' if venv_py.exists() else 'does not exist'}.\n"
        f"  set it up (builds llama.cpp for the CPU, ~10-20 min on 2 cores):\n"
        f"    python3 -m venv {args.venv}\n"
        f"    CMAKE_BUILD_PARALLEL_LEVEL=2 {args.venv}/bin/pip install -r {req}\n"
        f"  or point --venv (or CAPMOE_LLAMA_VENV) at a venv that has llama-cpp-python, gguf and numpy."
    )


# ----------------------------------------------------------------------------- checkpoint reading

def read_safetensors(model_dir):
    """{name: np.float32 array} from model.safetensors or its sharded index."""
    import numpy as np

    model_dir = Path(model_dir)
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if single.exists():
        files = [single]
    elif index.exists():
        files = sorted({model_dir / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        die(f"{model_dir} has neither model.safetensors nor model.safetensors.index.json")
    out = {}
    for f in files:
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
            base = 8 + n
            buf = np.memmap(f, dtype=np.uint8, mode="r")
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                a, b = meta["data_offsets"]
                raw = buf[base + a: base + b]
                dt = meta["dtype"]
                if dt == "F32":
                    arr = raw.view(np.float32)
                elif dt == "BF16":
                    arr = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
                elif dt == "F16":
                    arr = raw.view(np.float16).astype(np.float32)
                else:
                    die(f"{f}: tensor {name} has dtype {dt}; only F32, BF16 and F16 are read")
                out[name] = np.array(arr, dtype=np.float32).reshape(meta["shape"])
    return out


def load_config(model_dir):
    cfg_path = Path(model_dir) / "config.json"
    if not cfg_path.exists():
        die(f"no config.json in {model_dir} (expected a Hugging Face Mixtral checkpoint directory)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("model_type") not in ("mixtral", None):
        die(f"{cfg_path}: model_type {cfg.get('model_type')!r}, expected 'mixtral'")
    cfg.setdefault("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    if cfg.get("head_dim") is None:
        cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta") or 1e6
    cfg["rope_theta"] = float(theta)
    return cfg


def read_vocab(model_dir, n_vocab):
    """(tokens, char_level) from tokenizer.json; placeholder names where absent."""
    tok_path = Path(model_dir) / "tokenizer.json"
    tokens = [f"<tok_{i}>" for i in range(n_vocab)]
    char_level = False
    if tok_path.exists():
        tj = json.loads(tok_path.read_text())
        model = tj.get("model", {})
        for text, i in (model.get("vocab") or {}).items():
            if i < n_vocab:
                tokens[i] = text
        for at in tj.get("added_tokens", []):
            if at["id"] < n_vocab:
                tokens[at["id"]] = at["content"]
        char_level = model.get("type") == "BPE" and not model.get("merges")
    seen = set()
    for i, t in enumerate(tokens):  # llama.cpp maps text -> id: keep texts unique
        if t in seen:
            tokens[i] = f"<dup_{i}>"
        seen.add(tokens[i])
    return tokens, char_level


# ----------------------------------------------------------------------------- GGUF writing

def permute_rope(w, n_head):
    """HF rotate-half layout -> llama.cpp's interleaved pairs (convert_hf_to_gguf.py's permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model_dir, cfg, tensors, fmt, path):
    import gguf
    import numpy as np

    qtype = {"f32": gguf.GGMLQuantizationType.F32, "bf16": gguf.GGMLQuantizationType.BF16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0}[fmt]
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[fmt]
    L, E = cfg["num_hidden_layers"], cfg["num_local_experts"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    # Written under a temporary name and renamed at the end: the cache reuses
    # any GGUF newer than the checkpoint, so a half-written one must never
    # carry the final name.
    tmp = path.with_name(path.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name(Path(model_dir).name)
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(L)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_rope_dimension_count(hd)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-5))
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_expert_count(E)
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(ftype)
    tokens, _ = read_vocab(model_dir, cfg["vocab_size"])
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    types = [gguf.TokenType.NORMAL] * len(tokens)
    eos = cfg.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    bos = cfg.get("bos_token_id")
    if "<unk>" in tokens:
        w.add_unk_token_id(tokens.index("<unk>"))
        types[tokens.index("<unk>")] = gguf.TokenType.UNKNOWN
    if eos is not None:
        w.add_eos_token_id(eos)
    if bos is not None:
        w.add_bos_token_id(bos)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_token_types(types)

    def put(name, arr, keep_f32=False):
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if keep_f32 or qtype == gguf.GGMLQuantizationType.F32 or arr.ndim < 2:
            w.add_tensor(name, arr)
        elif qtype == gguf.GGMLQuantizationType.Q8_0 and arr.shape[-1] % 32:
            w.add_tensor(name, arr)  # Q8_0 needs rows that are a multiple of 32
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)

    t = tensors
    put("token_embd.weight", t["model.embed_tokens.weight"])
    put("output_norm.weight", t["model.norm.weight"])
    head = t.get("lm_head.weight", t["model.embed_tokens.weight"])
    put("output.weight", head)
    for i in range(L):
        p = f"model.layers.{i}."
        put(f"blk.{i}.attn_norm.weight", t[p + "input_layernorm.weight"])
        put(f"blk.{i}.ffn_norm.weight", t[p + "post_attention_layernorm.weight"])
        put(f"blk.{i}.attn_q.weight", permute_rope(t[p + "self_attn.q_proj.weight"], nh))
        put(f"blk.{i}.attn_k.weight", permute_rope(t[p + "self_attn.k_proj.weight"], nkv))
        put(f"blk.{i}.attn_v.weight", t[p + "self_attn.v_proj.weight"])
        put(f"blk.{i}.attn_output.weight", t[p + "self_attn.o_proj.weight"])
        m = p + "block_sparse_moe."
        put(f"blk.{i}.ffn_gate_inp.weight", t[m + "gate.weight"], keep_f32=True)
        for ours, hf in (("gate", "w1"), ("down", "w2"), ("up", "w3")):
            stack = np.stack([t[f"{m}experts.{e}.{hf}.weight"] for e in range(E)])
            put(f"blk.{i}.ffn_{ours}_exps.weight", stack)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)


def convert(model_dir, cfg, formats, gguf_dir, force):
    gguf_dir.mkdir(parents=True, exist_ok=True)
    stamp = (Path(model_dir) / "config.json").stat().st_mtime
    paths, tensors = {}, None
    for fmt in formats:
        path = gguf_dir / f"{Path(model_dir).name}-{fmt}.gguf"
        paths[fmt] = path
        if path.exists() and not force and path.stat().st_mtime >= stamp:
            print(f"gguf: {path} exists (--force-convert rewrites it)")
            continue
        if tensors is None:
            tensors = read_safetensors(model_dir)
        t0 = time.time()
        write_gguf(model_dir, cfg, tensors, fmt, path)
        print(f"gguf: wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {time.time() - t0:.1f} s)")
    return paths


# ----------------------------------------------------------------------------- random checkpoint

def make_random(name, layers, out_dir, seed):
    """A Hugging Face Mixtral checkpoint with seeded random f32 weights in a capmoe built-in shape."""
    import numpy as np

    shapes = {"tiny": (32, 64, 2, 4, 2, 4, 128), "small": (1024, 3584, 4, 16, 4, 8, 32000)}
    if name not in shapes:
        die(f"--make-random takes one of {sorted(shapes)} (mixtral-8x7b is too large for this machine)")
    h, inter, L, nh, nkv, E, V = shapes[name]
    L = layers or L
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": h,
           "intermediate_size": inter, "num_hidden_layers": L, "num_attention_heads": nh,
           "num_key_value_heads": nkv, "head_dim": h // nh, "num_local_experts": E,
           "num_experts_per_tok": 2, "vocab_size": V, "rms_norm_eps": 1e-5, "rope_theta": 1e6,
           "max_position_embeddings": 32768, "tie_word_embeddings": False, "hidden_act": "silu",
           "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}
    rng = np.random.default_rng(seed)
    hd = h // nh
    t = {"model.embed_tokens.weight": (V, h), "lm_head.weight": (V, h), "model.norm.weight": (h,)}
    for i in range(L):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (h,)
        t[p + "post_attention_layernorm.weight"] = (h,)
        t[p + "self_attn.q_proj.weight"] = (nh * hd, h)
        t[p + "self_attn.k_proj.weight"] = (nkv * hd, h)
        t[p + "self_attn.v_proj.weight"] = (nkv * hd, h)
        t[p + "self_attn.o_proj.weight"] = (h, nh * hd)
        t[p + "block_sparse_moe.gate.weight"] = (E, h)
        for e in range(E):
            t[f"{p}block_sparse_moe.experts.{e}.w1.weight"] = (inter, h)
            t[f"{p}block_sparse_moe.experts.{e}.w2.weight"] = (h, inter)
            t[f"{p}block_sparse_moe.experts.{e}.w3.weight"] = (inter, h)
    header, off = {}, 0
    for k, s in t.items():
        n = int(np.prod(s)) * 4
        header[k] = {"dtype": "F32", "shape": list(s), "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    tmp = out_dir / "model.safetensors.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for k, s in t.items():
            if len(s) == 1:
                a = np.ones(s, np.float32)
            else:
                a = (rng.standard_normal(s, dtype=np.float32) * np.float32(1.0 / np.sqrt(s[1]))).astype(np.float32)
            f.write(a.tobytes())
    os.replace(tmp, out_dir / "model.safetensors")
    write_atomically(out_dir / "config.json", json.dumps(cfg, indent=2))
    print(f"random checkpoint: {out_dir} ({name}, {L} layers, seed {seed})")


# ----------------------------------------------------------------------------- llama.cpp side

class Llama:
    """One GGUF model and one context through the low-level C API."""

    def __init__(self, path, threads, n_ctx, n_seq_max, n_batch):
        import llama_cpp as lc
        import numpy as np

        self.lc, self.np = lc, np
        mp = lc.llama_model_default_params()
        mp.n_gpu_layers = 0
        self.model = lc.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            die(f"llama.cpp could not load {path}")
        cp = lc.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = n_batch
        cp.n_seq_max = n_seq_max
        cp.n_threads = threads
        cp.n_threads_batch = threads
        self.ctx = lc.llama_init_from_model(self.model, cp)
        if not self.ctx:
            die(f"llama.cpp could not make a context for {path} (n_ctx {n_ctx}, n_seq_max {n_seq_max})")
        self.kv_unified = bool(getattr(cp, "kv_unified", False))
        vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(vocab)
        self.batch = lc.llama_batch_init(n_batch, 0, n_seq_max)

    def clear(self):
        lc = self.lc
        if hasattr(lc, "llama_memory_clear"):
            lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        else:
            lc.llama_kv_self_clear(self.ctx)

    def _decode(self, items):
        """items: (token, pos, seq, want_logits). Returns the argmax id of every logits row."""
        b = self.batch
        for i, (tok, pos, seq, lg) in enumerate(items):
            b.token[i] = int(tok)
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = 1 if lg else 0
        b.n_tokens = len(items)
        rc = self.lc.llama_decode(self.ctx, b)
        if rc != 0:
            die(f"llama_decode returned {rc}")
        out = []
        for i, it in enumerate(items):
            if it[3]:
                ptr = self.lc.llama_get_logits_ith(self.ctx, i)
                out.append(int(self.np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).argmax()))
        return out

    def prefill(self, prompts):
        """All prompts in one llama_decode; returns (ms, next ids)."""
        self.clear()
        items = []
        for s, p in enumerate(prompts):
            items += [(t, j, s, j == len(p) - 1) for j, t in enumerate(p)]
        self.lc.llama_synchronize(self.ctx)
        t0 = time.perf_counter()
        nxt = self._decode(items)
        self.lc.llama_synchronize(self.ctx)
        return (time.perf_counter() - t0) * 1e3, nxt

    def decode(self, prompts, steps):
        """Prefill (untimed), then `steps` greedy steps of one token per sequence; ms per step, ids."""
        _, nxt = self.prefill(prompts)
        pos = [len(p) for p in prompts]
        gen = [[n] for n in nxt]
        t0 = time.perf_counter()
        for _ in range(steps):
            nxt = self._decode([(nxt[s], pos[s], s, True) for s in range(len(prompts))])
            for s in range(len(prompts)):
                pos[s] += 1
                gen[s].append(nxt[s])
        self.lc.llama_synchronize(self.ctx)
        return (time.perf_counter() - t0) * 1e3 / max(steps, 1), gen


def quiet_llama_logs():
    import ctypes

    import llama_cpp as lc

    @lc.llama_log_callback
    def _cb(level, text, user_data):
        pass

    lc.llama_log_set(_cb, ctypes.c_void_p(0))
    return _cb  # keep a reference


# ----------------------------------------------------------------------------- capmoe side

def run(cmd, what):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        die(f"{what} failed (exit {p.returncode}): {' '.join(map(str, cmd))}\n{p.stderr.strip()[-2000:]}")
    return p.stdout


def capmoe_bench(capmoe, model, batch, seq_len, steps, threads):
    with tempfile.TemporaryDirectory(prefix="capmoe-vs-llama-") as out:
        cmd = [str(capmoe), "bench", "--device", "cpu", "--model", str(model), "--batch", str(batch),
               "--seq-len", str(seq_len), "--decode-steps", str(steps), "--policies", "none",
               "--no-eval", "--out", out]
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            die(f"capmoe bench failed (exit {p.returncode}): {' '.join(cmd)}\n{p.stderr.strip()[-2000:]}")
        rep = json.loads((Path(out) / "report.json").read_text())
    case = next(c for c in rep["cases"] if c["policy"] == "none")
    tp = case["summary"]["throughput"]
    return {"prefill_ms": tp["prefill_ms"], "decode_ms": tp.get("decode_step_ms")}, cmd


# ----------------------------------------------------------------------------- helpers

def stats(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    n = len(xs)
    med = xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])
    return {"median": med, "min": xs[0], "max": xs[-1], "n": n, "all": xs}


def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except FileNotFoundError:
        pass
    return platform.processor() or "unknown"


def prompt_ids(model_dir, cfg, n_tokens, seed):
    """A long id stream: the checkpoint's eval text, character-encoded, or seeded random ids."""
    import numpy as np

    tokens, char_level = read_vocab(model_dir, cfg["vocab_size"])
    ev = Path(model_dir) / "eval.jsonl"
    if char_level and ev.exists():
        t2i = {t: i for i, t in enumerate(tokens)}
        unk = t2i.get("<unk>", 0)
        ids = []
        for line in ev.read_text().splitlines():
            ex = json.loads(line)
            text = ex.get("prompt", "") + ex.get("answer", "") + "\n"
            ids += [t2i.get(ch, unk) for ch in text]
            if len(ids) >= n_tokens:
                return ids[:n_tokens], "eval.jsonl text, one id per character"
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.integers(0, cfg["vocab_size"], n_tokens)], f"random ids (seed {seed})"


def fmt_stat(s, digits=2):
    if s is None:
        return "-"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " (issue 24, item 5).",
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "bench/models/mixtral-like"),
                    help="Hugging Face Mixtral checkpoint directory [default: bench/models/mixtral-like]")
    ap.add_argument("--make-random", metavar="SHAPE",
                    help="first write a random-weight checkpoint of capmoe's built-in SHAPE (tiny, small) to --model")
    ap.add_argument("--layers", type=int, help="with --make-random: decoder layers [default: the shape's]")
    ap.add_argument("--seed", type=int, default=0, help="random weights / random prompt ids [default: 0]")
    ap.add_argument("--capmoe", default=str(REPO / "target/release/capmoe"),
                    help="capmoe binary [default: target/release/capmoe; build: cargo build --release --bin capmoe]")
    ap.add_argument("--venv", default=DEFAULT_VENV,
                    help=f"venv with llama-cpp-python, gguf, numpy; used when this python lacks them [default: $CAPMOE_LLAMA_VENV or {DEFAULT_VENV}]")
    ap.add_argument("--out", default=str(REPO / "bench/results/cpu-vs-llama"),
                    help="results folder: results.json, results.md [default: bench/results/cpu-vs-llama]")
    ap.add_argument("--gguf-dir", default=DEFAULT_GGUF_DIR,
                    help=f"where the GGUF files go (reused when newer than config.json) [default: {DEFAULT_GGUF_DIR}]")
    ap.add_argument("--force-convert", action="store_true", help="rewrite the GGUF files even if present")
    ap.add_argument("--convert-only", action="store_true", help="write the GGUF files and stop (needs gguf and numpy only)")
    ap.add_argument("--formats", default=",".join(FORMATS), help="llama.cpp weight formats: f32,bf16,q8_0 [default: all]")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="threads for both engines (llama.cpp n_threads, capmoe RAYON_NUM_THREADS) [default: nproc]")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds, engines alternating within each [default: 5]")
    ap.add_argument("--prefill-tokens", type=int, default=512, help="tokens in the prefill forward [default: 512]")
    ap.add_argument("--decode-steps", type=int, default=32, help="greedy decode steps timed per run [default: 32]")
    ap.add_argument("--decode-context", type=int, default=512,
                    help="prompt tokens before decode at batch 1 (cut to max_position_embeddings - steps) [default: 512]")
    ap.add_argument("--decode-context-b8", type=int, default=64,
                    help="prompt tokens per sequence before decode at batch 8 (cut likewise) [default: 64]")
    ap.add_argument("--greedy-ids", default="34,1,66,67,30",
                    help="prompt ids of the greedy agreement check [default: 34,1,66,67,30]")
    ap.add_argument("--greedy-new", type=int, default=8, help="new tokens compared in the greedy check [default: 8]")
    args = ap.parse_args()

    ensure_python(args)
    import numpy as np  # noqa: F401

    if args.make_random:
        make_random(args.make_random, args.layers, args.model, args.seed)
    model = Path(args.model).resolve()
    if not model.is_dir():
        die(f"model directory {model} does not exist (give --model DIR, a Hugging Face Mixtral checkpoint, or --make-random small)")
    cfg = load_config(model)
    formats = [f.strip().lower() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        die(f"--formats: unknown {bad}; choose from {','.join(FORMATS)}")
    gguf_paths = convert(model, cfg, formats, Path(args.gguf_dir), args.force_convert)
    if args.convert_only:
        return

    capmoe = Path(args.capmoe)
    if not capmoe.exists():
        die(f"capmoe binary {capmoe} is missing: build it with `cargo build --release --bin capmoe` (or give --capmoe)")

    # ---- shapes
    M = cfg.get("max_position_embeddings", 1 << 20)
    N = args.decode_steps
    P = args.prefill_tokens
    ps = max(d for d in range(1, min(P, M) + 1) if P % d == 0)
    pb = P // ps
    c1 = min(args.decode_context, M - N - 1)
    c8 = min(args.decode_context_b8, M - N - 1)
    if c1 < 1 or c8 < 1:
        die(f"--decode-steps {N} leaves no room for a prompt under max_position_embeddings {M}")
    notes = []
    if pb > 1:
        notes.append(f"max_position_embeddings is {M}, so the {P}-token prefill is {pb} sequences x {ps} tokens in one forward (both engines)")
    if c1 < args.decode_context:
        notes.append(f"decode at batch 1 runs after a {c1}-token prompt (max_position_embeddings {M} - {N} steps - 1), not {args.decode_context}")
    if c8 < args.decode_context_b8:
        notes.append(f"decode at batch 8 runs after {c8}-token prompts, not {args.decode_context_b8}")
    shapes = {
        "prefill": {"batch": pb, "seq_len": ps, "steps": 0},
        "decode_b1": {"batch": 1, "seq_len": c1, "steps": N},
        "decode_b8": {"batch": 8, "seq_len": c8, "steps": N},
    }
    ids, ids_src = prompt_ids(model, cfg, max(P, 8 * c8, c1), args.seed)

    def prompts(shape):
        b, s = shape["batch"], shape["seq_len"]
        return [ids[i * s:(i + 1) * s] for i in range(b)]

    # ---- llama.cpp contexts (one per format; loaded once)
    import llama_cpp

    cb = quiet_llama_logs()  # noqa: F841
    llama_cpp.llama_backend_init()
    per_seq = max(ps, c1 + N + 1, c8 + N + 1)
    n_seq = max(8, pb)
    n_ctx = n_seq * per_seq
    n_ctx = (n_ctx + 255) // 256 * 256
    n_batch = max(P, 8 * c8, c1)
    engines = {f: Llama(gguf_paths[f], args.threads, n_ctx, n_seq, n_batch) for f in formats}

    def time_llama(eng, name):
        sh = shapes[name]
        if name == "prefill":
            return eng.prefill(prompts(sh))[0]
        return eng.decode(prompts(sh), sh["steps"])[0]

    def time_capmoe():
        out, cmds = {}, {}
        for name, sh in shapes.items():
            r, cmd = capmoe_bench(capmoe, model, sh["batch"], sh["seq_len"], sh["steps"], args.threads)
            out[name] = r["prefill_ms"] if name == "prefill" else r["decode_ms"]
            cmds[name] = " ".join(cmd[:-2] + ["--out", "<tmp>"])
        return out, cmds

    load_before = loadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"model {model}: hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, "
          f"{cfg['num_local_experts']} experts top-{cfg['num_experts_per_tok']}, vocab {cfg['vocab_size']}; "
          f"threads {args.threads}; load {load_before}")
    for n in notes:
        print("note:", n)
    # warm-up round, untimed
    _, capmoe_cmds = time_capmoe()
    for f in formats:
        for name in shapes:
            time_llama(engines[f], name)
    samples = {"capmoe f32": {k: [] for k in shapes}}
    samples.update({f"llama.cpp {f}": {k: [] for k in shapes} for f in formats})
    for r in range(args.rounds):
        res, _ = time_capmoe()
        for k, v in res.items():
            samples["capmoe f32"][k].append(v)
        for f in formats:
            for name in shapes:
                samples[f"llama.cpp {f}"][name].append(time_llama(engines[f], name))
        row = "  ".join(f"{eng}: " + "/".join(f"{samples[eng][k][-1]:.2f}" for k in shapes) for eng in samples)
        print(f"round {r + 1}/{args.rounds} (prefill ms / decode b1 ms / decode b8 ms)  {row}")
    load_after = loadavg()
    busy = [x for x in (load_before, load_after) if x and x[0] > 0.5 * (os.cpu_count() or 1)]
    if busy:
        notes.append(f"the machine was busy (1-min load average {load_before[0] if load_before else '?'} before, "
                     f"{load_after[0] if load_after else '?'} after, on {os.cpu_count()} CPUs): other processes shared "
                     f"the cores, so the ranges are wide; llama.cpp's OpenMP threads spin at barriers and lose more "
                     f"when a core is taken than capmoe's rayon pool does. Rerun on an idle machine for numbers to quote.")

    # ---- greedy agreement
    gids = [int(x) for x in args.greedy_ids.split(",")]
    if max(gids) >= cfg["vocab_size"]:
        die(f"--greedy-ids has an id >= vocab size {cfg['vocab_size']}")
    gcmd = [str(capmoe), "generate", "--model", str(model), "--ids", ",".join(map(str, gids)),
            "--max-new-tokens", str(args.greedy_new), "--ignore-eos", "--json"]
    cap_gen = json.loads(run(gcmd, "capmoe generate").strip().splitlines()[-1])["generated"]
    greedy = {"prompt_ids": gids, "capmoe f32": cap_gen, "command": " ".join(gcmd)}
    for f in formats:
        greedy[f"llama.cpp {f}"] = engines[f].decode([gids], args.greedy_new - 1)[1][0]
    for f in formats:
        g = greedy[f"llama.cpp {f}"]
        agree = 0
        for a, b in zip(g, cap_gen):
            if a != b:
                break
            agree += 1
        greedy[f"agree {f}"] = {"first_token": bool(g and cap_gen and g[0] == cap_gen[0]),
                                "matching_prefix": agree, "of": min(len(g), len(cap_gen))}

    # ---- results
    st = {eng: {k: stats(v) for k, v in d.items()} for eng, d in samples.items()}
    base = st["capmoe f32"]
    ratios = {}
    for eng in st:
        if eng == "capmoe f32":
            continue
        ratios[eng] = {k: (st[eng][k]["median"] / base[k]["median"] if st[eng][k] and base[k] else None)
                       for k in shapes}
    ver = getattr(llama_cpp, "__version__", "?")
    result = {
        "date_utc": started.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpu": cpu_model(), "nproc": os.cpu_count(), "loadavg_before": load_before,
                    "loadavg_after": load_after, "python": platform.python_version(),
                    "llama_cpp_python": ver, "kv_unified": engines[formats[0]].kv_unified},
        "model": {"dir": str(model), "config": {k: cfg.get(k) for k in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "num_local_experts", "num_experts_per_tok",
            "vocab_size", "max_position_embeddings")}},
        "threads": args.threads,
        "rounds": args.rounds,
        "shapes": shapes,
        "notes": notes,
        "llama_prompt_ids": ids_src,
        "gguf": {f: str(p) for f, p in gguf_paths.items()},
        "commands": {"capmoe": capmoe_cmds, "this": " ".join([sys.executable] + sys.argv),
                     "llama.cpp": f"llama-cpp-python {ver} low-level API: llama_batch_init/llama_decode, "
                                  f"n_ctx {n_ctx}, n_batch=n_ubatch {n_batch}, n_seq_max {n_seq}, "
                                  f"n_threads=n_threads_batch {args.threads}"},
        "units": {"prefill": "ms per forward", "decode_b1": "ms per token", "decode_b8": "ms per step of 8 tokens"},
        "stats": st,
        "ratio_llama_over_capmoe": ratios,
        "greedy": greedy,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "results.json", json.dumps(result, indent=2) + "\n")

    c = cfg
    md = [f"# capmoe vs llama.cpp on the CPU", "",
          f"Written by `tools/peers/llama_cpp/bench.py` on {result['date_utc']} UTC. "
          f"Machine: {result['machine']['cpu']}, nproc {os.cpu_count()}, load average (1, 5, 15 min) "
          f"{load_before} before, {load_after} after; {args.threads} threads for both engines; "
          f"llama-cpp-python {ver} (CPU build).", "",
          f"Model: `{model.relative_to(REPO) if model.is_relative_to(REPO) else model}`: hidden {c['hidden_size']}, "
          f"intermediate {c['intermediate_size']}, {c['num_hidden_layers']} layers, {c['num_local_experts']} experts "
          f"top-{c['num_experts_per_tok']}, vocab {c['vocab_size']}, max_position_embeddings {M}.", "",
          f"Median over {args.rounds} rounds (min-max), engines alternating within each round after one "
          f"untimed warm-up round. Ratio = llama.cpp median / capmoe median (> 1: capmoe is faster).", "",
          f"| engine | prefill {P} tok, ms | decode b1, ms/token | decode b8, ms/step | prefill ratio | b1 ratio | b8 ratio |",
          "|---|---|---|---|---|---|---|"]
    for eng in st:
        r = ratios.get(eng)
        rs = [f"{r[k]:.2f}x" if r and r[k] else "-" for k in shapes] if eng != "capmoe f32" else ["1.00x"] * 3
        md.append(f"| {eng} | {fmt_stat(st[eng]['prefill'])} | {fmt_stat(st[eng]['decode_b1'], 3)} | "
                  f"{fmt_stat(st[eng]['decode_b8'], 3)} | {' | '.join(rs)} |")
    md += ["", "Shapes:", "",
           f"- prefill: {pb} x {ps} tokens in one forward, logits at each sequence's last position",
           f"- decode b1: 1 sequence after a {c1}-token prompt, {N} greedy steps",
           f"- decode b8: 8 sequences after {c8}-token prompts each, {N} greedy steps of 8 tokens",
           f"- llama.cpp prompt ids: {ids_src}; capmoe feeds its checkpoint's held-out text when it ships eval.jsonl"]
    for n in notes:
        md.append(f"- note: {n}")
    md += ["", "Greedy agreement (`capmoe generate` vs llama.cpp, same prompt ids "
           f"{gids}, {args.greedy_new} new tokens):", "",
           f"- capmoe f32: {cap_gen}"]
    for f in formats:
        a = greedy[f"agree {f}"]
        md.append(f"- llama.cpp {f}: {greedy[f'llama.cpp {f}']}: first token "
                  f"{'agrees' if a['first_token'] else 'DIFFERS'}, {a['matching_prefix']}/{a['of']} agree before the first difference")
    md += ["", "Commands:", "", "```"]
    md += [f"{k}: {v}" for k, v in capmoe_cmds.items()]
    md += [f"llama.cpp: {result['commands']['llama.cpp']}", f"greedy: {greedy['command']}",
           f"this run: {result['commands']['this']}", "```", ""]
    write_atomically(out / "results.md", "\n".join(md))
    print("\n".join(md))
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")


if __name__ == "__main__":
    main()
