#!/usr/bin/env python3
"""Device-side peers of the expert-FFN benchmark (issue 5, design.md §5-6).

Runs on the GPU machine after the packed binaries (tools/gpu-check.sh copies it into the pack), in
the same run as bench/gpu_ffn.rs, so that every ratio in the report compares numbers measured on
one GPU, one driver and one clock state:

  ceilings    bf16 8192^3 torch.matmul TFLOP/s and device-to-device copy GB/s (read + write bytes)
  grouped_mm  the same expert FFN with torch._grouped_mm: rows sorted by expert, int32 offsets,
              GEMM1 over capmoe's interleaved W13, SwiGLU, GEMM2 (compare: ExpertFfn::forward)
  grouped_mm_layer  logits -> softmax/top-k -> sort -> the FFN above -> weighted scatter-add
              (compare: MoeLayer::forward)
  hf_block    transformers' MixtralSparseMoeBlock (eager experts) with the same weights and the
              same router logits (its gate is replaced by the fixed logits; compare: MoeLayer)

The weights are capmoe's: `ExpertFfn::random(seed)` draws W13 [E, 2I, H] (interleaved: row 2j is
w1[j], row 2j+1 is w3[j]) and W2 [E, H, I] from a hash of (index, seed) (twin:
src/expert/init.rs); this script redraws them on the device with int64 torch math. The loads are
the bench's: `balanced` spreads the T*k rows evenly over the experts, `skewed` gives expert 0
three times the mean and spreads the rest; token t's slots are filled expert-major so that no token
picks an expert twice, and its router logits are k+1-slot on its slot experts, 0 elsewhere.

Output: JSON to OUT/peers.json and lines on stdout
  CAPMOE_CEILING|name|value            CAPMOE_PEER|name|T|load|micros
  CAPMOE_PEER_CHECK|grouped_mm|T|load|rows|sum|sumabs|sumsq   (compare the bench's CAPMOE_FFN_CHECK)
  CAPMOE_PEER_ROW|torch_matmul|T|load|token|expert|v0 .. v7     (compare CAPMOE_FFN_ROW)
Missing torch, CUDA, torch._grouped_mm or transformers is recorded as "unavailable: reason" and the
script still exits 0. `--self-test` checks the pure-Python hash against pinned values (no torch).

usage: ffn_peers.py [--out DIR] [--budget S] [--tokens 1,16,...] [--self-test]
"""
import argparse
import json
import math
import os
import platform
import statistics
import struct
import sys
import time

MASK = 0xFFFFFFFF
MUL = 0x045D9F3B  # < 2^27: a masked 32-bit value times MUL stays below 2^59, exact in int64
INIT_SCALE = struct.unpack("<f", struct.pack("<f", 0.034641016))[0]  # f32, as in init.rs
X_SCALE = 1.0
LOADS = ("balanced", "skewed")
DEFAULT_TOKENS = (1, 16, 64, 256, 1024, 4096, 16384)
CHECK_TOKENS = 64  # the T of the cross-check with the bench (CAPMOE_FFN_CHECK, CAPMOE_FFN_ROW)
CHECK_VALUES = 8  # leading values of each checked row

# (seed, index) -> bf16 bits, computed with hash_bf16_py below and pinned on the Rust side by
# tests/expert_init_pins.rs (seeds 14/15 are W13/W2 of model seed 7, 1234 the activations).
PINS = {
    (0, 0): 0xBD0E, (0, 1): 0xBCAF, (0, 2): 0xBBE1,
    (14, 0): 0x3CFE, (14, 1): 0x3C51, (14, 12345): 0xBD0B, (14, 939524095): 0x3CDC,
    (14, 2147483653): 0x3B9B, (14, 4294967295): 0x3CA0,
    (15, 0): 0x3CDF, (15, 1): 0x3D01, (15, 12345): 0xBCD9, (15, 939524095): 0x3BF6,
    (15, 2147483653): 0xBC41, (15, 4294967295): 0xBB1D,
}
PINS_X = {(1234, 0): 0x3F73, (1234, 1): 0x3F02, (1234, 4097): 0x3D98, (1234, 67108867): 0x3DCF}


# ---------------------------------------------------------------- hash (plain ints, the spec)
def hash32_py(x):
    x &= MASK
    x ^= x >> 16
    x = (x * MUL) & MASK
    x ^= x >> 16
    x = (x * MUL) & MASK
    x ^= x >> 16
    return x


def _f32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]


def hash_uniform_py(i, seed, scale):
    """f32 uniform in [-scale, scale): (2f - 1) is exact, the product (exact in a double: 24 x 24
    bits) is rounded to f32 once, as the f32 multiply of the kernel and of init.rs."""
    u = hash32_py((i & MASK) ^ hash32_py(seed))
    f = (u >> 8) * 2.0**-24
    return _f32((2.0 * f - 1.0) * _f32(scale))


def bf16_bits_py(v):
    b = struct.unpack("<I", struct.pack("<f", v))[0]
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF  # round to nearest even


def hash_bf16_py(i, seed, scale):
    return bf16_bits_py(hash_uniform_py(i, seed, scale))


def self_test():
    bad = [(k, hex(v), hex(hash_bf16_py(k[1], k[0], INIT_SCALE)))
           for k, v in PINS.items() if hash_bf16_py(k[1], k[0], INIT_SCALE) != v]
    bad += [(k, hex(v), hex(hash_bf16_py(k[1], k[0], X_SCALE)))
            for k, v in PINS_X.items() if hash_bf16_py(k[1], k[0], X_SCALE) != v]
    if hash32_py(1) != 0x31251BA7 or hash_uniform_py(1, 0, 1.0) != _f32(-0.61605513):
        bad.append(("hash32/hash_uniform doctest values of init.rs", "", ""))
    if INIT_SCALE != _f32(0.02 * math.sqrt(3.0)):
        bad.append(("INIT_SCALE", INIT_SCALE, _f32(0.02 * math.sqrt(3.0))))
    return bad


# ---------------------------------------------------------------- loads (same as bench/gpu_ffn.rs)
def expert_counts(tokens, experts, k, load):
    """Rows per expert: `balanced` spreads T*k evenly (the first T*k mod E experts get one more);
    `skewed` gives expert 0 round(3 T k / E) (at most T) and spreads the rest over 1..E-1."""
    total = tokens * k
    if load == "balanced":
        return [total // experts + (e < total % experts) for e in range(experts)]
    hot = min(tokens, (3 * total + experts // 2) // experts)
    rest, n = total - hot, experts - 1
    return [hot] + [rest // n + (e < rest % n) for e in range(n)]


def assignments(tokens, experts, k, load):
    """[T][k] expert ids: the expert-sorted sequence of all rows laid slot-major (row p goes to
    token p mod T, slot p div T). Each expert's rows are consecutive and at most T, so they land
    on distinct tokens."""
    seq = [e for e, c in enumerate(expert_counts(tokens, experts, k, load)) for _ in range(c)]
    out = [[0] * k for _ in range(tokens)]
    for p, e in enumerate(seq):
        out[p % tokens][p // tokens] = e
    return out


# ---------------------------------------------------------------- device side
class Peers:
    def __init__(self, args, torch):
        self.args, self.torch = args, torch
        self.dev = torch.device(args.device)
        self.cuda = self.dev.type == "cuda"
        self.deadline = time.monotonic() + args.budget
        self.doc = {"results": [], "notes": []}
        self.E, self.H, self.I, self.k = args.experts, args.hidden, args.intermediate, args.k

    def left(self):
        return self.deadline - time.monotonic()

    # --- timing: events around n back-to-back calls, median over samples (like criterion's
    # iter_custom in the bench), samples sized to ~5 ms and the whole to `target` seconds.
    def time_fn(self, fn, target):
        def timed(n):  # seconds for n back-to-back calls
            if not self.cuda:  # --device cpu: the rehearsal of this script without a GPU
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                return time.perf_counter() - t0
            s.record()
            for _ in range(n):
                fn()
            e.record()
            e.synchronize()
            return s.elapsed_time(e) / 1e3

        if self.cuda:
            s = self.torch.cuda.Event(enable_timing=True)
            e = self.torch.cuda.Event(enable_timing=True)
        timed(1)
        one = max(timed(1), 1e-6)
        n = max(1, min(200, int(0.005 / one)))
        samples = max(3, min(15, int(target / (n * one))))
        times = [timed(n) * 1e6 / n for _ in range(samples)]
        return {"micros": statistics.median(times), "calls_per_sample": n, "samples": samples,
                "min_micros": min(times)}

    def ceilings(self):
        torch = self.torch
        n = self.args.ceiling_n
        a = torch.randn(n, n, device=self.dev, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=self.dev, dtype=torch.bfloat16)
        for _ in range(5):
            torch.matmul(a, b)
        t = self.time_fn(lambda: torch.matmul(a, b), 1.0)
        mm = 2.0 * n**3 / (t["micros"] * 1e-6) / 1e12
        del a, b
        nbytes = self.args.copy_mib << 20
        src = torch.empty(nbytes, dtype=torch.uint8, device=self.dev).fill_(1)
        dst = torch.empty_like(src)
        for _ in range(3):
            dst.copy_(src)
        tc = self.time_fn(lambda: dst.copy_(src), 1.0)
        copy = 2.0 * nbytes / (tc["micros"] * 1e-6) / 1e9
        del src, dst
        if self.cuda:
            torch.cuda.empty_cache()
        self.doc["ceilings"] = {
            "matmul_tflops": mm, "matmul": f"bf16 torch.matmul {n}x{n}x{n}, median of samples",
            "matmul_timing": t,
            "copy_gbps": copy, "copy": f"device-to-device copy_ of {self.args.copy_mib} MiB; GB/s "
            "counts read + write bytes (2 x the buffer per copy), 1 GB = 1e9 B", "copy_timing": tc,
        }
        print(f"CAPMOE_CEILING|matmul_tflops|{mm:.1f}")
        print(f"CAPMOE_CEILING|copy_gbps|{copy:.1f}")

    # --- capmoe's hash init with int64 torch math
    def hash_bf16(self, idx, seed, scale):
        """idx: int64 tensor of flat indices -> bf16 tensor (the spec's formula, twin of init.rs)."""
        torch = self.torch
        x = (idx & MASK) ^ hash32_py(seed)
        for _ in range(2):
            x = x ^ (x >> 16)
            x = (x * MUL) & MASK
        x = x ^ (x >> 16)
        f = (x >> 8).to(torch.float32) * (2.0**-24)  # 24 bits: exact
        w = (2.0 * f - 1.0) * torch.tensor(scale, dtype=torch.float32, device=idx.device)
        return w.to(torch.bfloat16)  # round to nearest even

    def fill(self, shape, seed, scale, chunk=1 << 26):
        torch = self.torch
        n = math.prod(shape)
        if n >= 1 << 32:
            raise ValueError("the hash fill indexes with u32: n must be < 2^32")
        out = torch.empty(n, dtype=torch.bfloat16, device=self.dev)
        for start in range(0, n, chunk):
            end = min(n, start + chunk)
            idx = torch.arange(start, end, dtype=torch.int64, device=self.dev)
            out[start:end] = self.hash_bf16(idx, seed, scale)
        return out.view(*shape)

    def hash_check(self, w13, w2, s13, s2):
        torch = self.torch
        bits = lambda t: int(t.view(torch.int16).item()) & 0xFFFF  # noqa: E731
        bad = []
        for (seed, i), want in PINS.items():
            got = bits(self.hash_bf16(torch.tensor([i], dtype=torch.int64, device=self.dev),
                                      seed, INIT_SCALE))
            if got != want:
                bad.append(f"formula seed {seed} index {i}: {got:#06x} != {want:#06x}")
        for (seed, i), want in PINS_X.items():
            got = bits(self.hash_bf16(torch.tensor([i], dtype=torch.int64, device=self.dev),
                                      seed, X_SCALE))
            if got != want:
                bad.append(f"formula seed {seed} index {i}: {got:#06x} != {want:#06x}")
        for buf, seed in ((w13, s13), (w2, s2)):
            flat = buf.reshape(-1)
            for i in (0, 1, 12345, flat.numel() - 1, flat.numel() // 3):
                if i < flat.numel():
                    want = hash_bf16_py(i, seed, INIT_SCALE)
                    got = bits(flat[i])
                    if got != want:
                        bad.append(f"buffer seed {seed} index {i}: {got:#06x} != {want:#06x}")
        self.doc["hash_check"] = {"ok": not bad, "mismatches": bad}
        if bad:
            raise RuntimeError("hash init does not match capmoe's: " + "; ".join(bad[:4]))

    def weights(self):
        seed = self.args.seed
        s13, s2 = (2 * seed) & MASK, (2 * seed + 1) & MASK
        t0 = time.monotonic()
        self.w13 = self.fill((self.E, 2 * self.I, self.H), s13, INIT_SCALE)
        self.w2 = self.fill((self.E, self.H, self.I), s2, INIT_SCALE)
        if self.cuda:
            self.torch.cuda.synchronize()
        self.hash_check(self.w13, self.w2, s13, s2)
        self.doc["weights"] = {"seed": seed, "w13_seed": s13, "w2_seed": s2, "scale": INIT_SCALE,
                               "draw_s": round(time.monotonic() - t0, 2)}

    def load(self, tokens, load):
        """Device tensors of one batch: x [T, H] (hash seed x_seed, scale 1), logits [T, E] f32,
        and the expert-sorted rows with their int32 offsets."""
        torch = self.torch
        E, k = self.E, self.k
        asg = torch.tensor(assignments(tokens, E, k, load), dtype=torch.int64)  # [T, k]
        slot_logit = torch.arange(k + 1, 1, -1, dtype=torch.float32).expand(tokens, k)
        logits = torch.zeros(tokens, E, dtype=torch.float32).scatter_(1, asg, slot_logit)
        idx = torch.arange(tokens * self.H, dtype=torch.int64, device=self.dev)
        x = self.hash_bf16(idx, self.args.x_seed, X_SCALE).view(tokens, self.H)
        counts = expert_counts(tokens, E, k, load)
        flat = asg.reshape(-1)
        order = torch.argsort(flat, stable=True)
        tok = (order // k).to(self.dev)
        offs = torch.tensor(counts, dtype=torch.int64).cumsum(0).to(torch.int32).to(self.dev)
        return {"x": x, "logits": logits.to(self.dev), "xs": x[tok].contiguous(), "offs": offs,
                "counts": counts, "active": sum(c > 0 for c in counts)}

    # --- grouped_mm FFN and layer
    def gmm_ffn(self, xs, offs):
        torch, F = self.torch, self.torch.nn.functional
        h13 = torch._grouped_mm(xs, self.w13t, offs=offs)
        h = (F.silu(h13[:, 0::2]) * h13[:, 1::2]).contiguous()
        return torch._grouped_mm(h, self.w2t, offs=offs)

    def gmm_layer(self, x, logits):
        torch = self.torch
        T, E, k = x.shape[0], self.E, self.k
        probs = torch.softmax(logits.float(), dim=-1)
        w, idx = torch.topk(probs, k, dim=-1)
        w = w / w.sum(dim=-1, keepdim=True)
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.zeros(E, dtype=torch.int32, device=x.device)
        counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
        offs = torch.cumsum(counts, 0, dtype=torch.int32)
        tok = order // k
        ys = self.gmm_ffn(x[tok], offs)
        ys = ys * w.reshape(-1)[order].unsqueeze(1).to(ys.dtype)
        out = torch.zeros_like(x)
        out.index_add_(0, tok, ys)
        return out

    def setup_grouped_mm(self):
        torch = self.torch
        if not hasattr(torch, "_grouped_mm"):
            return f"unavailable: torch {torch.__version__} has no torch._grouped_mm"
        # the op wants B as [G, K, N]; the transposed views of W13 [E, 2I, H] and W2 [E, H, I]
        # are column-major in the last two dims (what its bf16 kernels take), no copy.
        self.w13t = self.w13.transpose(1, 2)
        self.w2t = self.w2.transpose(1, 2)
        try:
            b = self.load(16, "balanced")
            self.gmm_ffn(b["xs"], b["offs"])
            if self.cuda:
                torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001 - any failure of the op is the peer's status
            return f"unavailable: torch._grouped_mm failed: {type(e).__name__}: {e}"[:400]
        return "ok"

    # --- HF transformers Mixtral block
    def setup_hf(self):
        torch = self.torch
        try:
            import transformers
            from transformers.models.mixtral import modeling_mixtral as mm
            from transformers import MixtralConfig
        except Exception as e:  # noqa: BLE001 - ImportError and broken installs alike
            return f"unavailable: {type(e).__name__}: {e}"[:400], None
        cfg = MixtralConfig(hidden_size=self.H, intermediate_size=self.I,
                            num_local_experts=self.E, num_experts_per_tok=self.k,
                            num_hidden_layers=1, vocab_size=128)
        try:  # transformers >= 5 dispatches experts by config; measure the eager loop
            cfg._experts_implementation = "eager"
        except Exception:  # noqa: BLE001
            pass
        try:
            try:  # no host-side init of 1.4e9 parameters: allocate on the device, uninitialised
                with torch.device("meta"):
                    block = mm.MixtralSparseMoeBlock(cfg)
                block = block.to_empty(device=self.dev)
            except Exception:  # noqa: BLE001 - a version whose init needs real tensors
                with torch.device(self.dev):
                    block = mm.MixtralSparseMoeBlock(cfg)
            block = block.to(torch.bfloat16).eval()
            with torch.no_grad():
                layout = self.hf_load_weights(block)
        except Exception as e:  # noqa: BLE001
            return f"unavailable: building the block failed: {type(e).__name__}: {e}"[:400], None
        self.doc["hf"] = {"transformers": transformers.__version__, "experts_layout": layout,
                          "experts_implementation": getattr(cfg, "_experts_implementation", None),
                          "gate": "replaced by the fixed router logits of the load"}
        return "ok", block

    def hf_load_weights(self, block):
        I = self.I
        w1, w3 = self.w13[:, 0::2, :], self.w13[:, 1::2, :]
        ex = block.experts
        if hasattr(ex, "gate_up_proj"):  # transformers >= 4.57/5: fused 3-D parameters
            gu, dn = ex.gate_up_proj, ex.down_proj
            if tuple(gu.shape) == (self.E, 2 * I, self.H):
                gu[:, :I].copy_(w1)
                gu[:, I:].copy_(w3)
                dn.copy_(self.w2)
                return "gate_up_proj [E, 2I, H] (gate rows then up rows), down_proj [E, H, I]"
            if tuple(gu.shape) == (self.E, self.H, 2 * I):
                gu[:, :, :I].copy_(w1.transpose(1, 2))
                gu[:, :, I:].copy_(w3.transpose(1, 2))
                dn.copy_(self.w2.transpose(1, 2))
                return "gate_up_proj [E, H, 2I] (transposed), down_proj [E, I, H]"
            raise ValueError(f"unknown gate_up_proj shape {tuple(gu.shape)}")
        for e, m in enumerate(ex):  # transformers 4.x: a ModuleList of w1/w2/w3 Linear
            m.w1.weight.copy_(w1[e])
            m.w3.weight.copy_(w3[e])
            m.w2.weight.copy_(self.w2[e])
        return "ModuleList of w1/w3 [I, H], w2 [H, I] Linear"

    def hf_set_logits(self, block, logits):
        torch = self.torch
        k = self.k

        class FixedLogits(torch.nn.Module):  # 4.x: gate is a Linear returning logits
            def forward(self, h):
                return logits.to(h.dtype)

        class FixedRouter(torch.nn.Module):  # 5.x: gate returns (logits, scores, indices)
            def forward(self, h):
                p = torch.softmax(logits.float(), dim=-1)
                v, i = torch.topk(p, k, dim=-1)
                return logits, v / v.sum(dim=-1, keepdim=True), i

        if not hasattr(self, "hf_gate_kind"):
            self.hf_gate_kind = "linear" if isinstance(block.gate, torch.nn.Linear) else "router"
        block.gate = FixedLogits() if self.hf_gate_kind == "linear" else FixedRouter()

    @staticmethod
    def hf_out(r):
        return r[0] if isinstance(r, tuple) else r

    def cross_check(self, b, T, load):
        """What bench/gpu_ffn.rs prints at T = CHECK_TOKENS, from torch: sums over the FFN's
        output rows (grouped_mm) and the first values of the rows of tokens 0, 1 and T-1, each
        computed alone with torch.matmul (an independent path: de-interleaved weights)."""
        torch, F = self.torch, self.torch.nn.functional
        y = self.gmm_ffn(b["xs"], b["offs"]).double()
        s, sa, sq = float(y.sum()), float(y.abs().sum()), float((y * y).sum())
        self.doc["checks"].append({"what": "ffn_sums", "T": T, "load": load, "rows": y.shape[0],
                                   "sum": s, "sumabs": sa, "sumsq": sq})
        print(f"CAPMOE_PEER_CHECK|grouped_mm|{T}|{load}|{y.shape[0]}|{s:.6e}|{sa:.6e}|{sq:.6e}")
        asg = assignments(T, self.E, self.k, load)
        for t in sorted({0, 1, T - 1}):
            for e in asg[t]:
                xr = b["x"][t:t + 1]
                g = xr @ self.w13[e, 0::2].t()
                u = xr @ self.w13[e, 1::2].t()
                yr = ((F.silu(g) * u) @ self.w2[e].t())[0, :CHECK_VALUES].float().tolist()
                self.doc["checks"].append({"what": "ffn_row", "T": T, "load": load, "token": t,
                                           "expert": e, "values": yr})
                vals = " ".join(f"{v:.6e}" for v in yr)
                print(f"CAPMOE_PEER_ROW|torch_matmul|{T}|{load}|{t}|{e}|{vals}")

    # --- the run
    def record(self, name, tokens, load, timing, b, extra=None):
        row = {"peer": name, "T": tokens, "load": load, "rows": tokens * self.k,
               "active_experts": b["active"], **timing, **(extra or {})}
        self.doc["results"].append(row)
        print(f"CAPMOE_PEER|{name}|{tokens}|{load}|{timing['micros']:.2f}", flush=True)

    def run(self):
        torch = self.torch
        self.ceilings()
        self.weights()
        peers = self.doc["peers"] = {}
        peers["grouped_mm"] = peers["grouped_mm_layer"] = self.setup_grouped_mm()
        hf_status, block = self.setup_hf() if self.left() > 10 else ("skipped: budget", None)
        peers["hf_block"] = hf_status
        tokens = self.args.tokens
        n_meas = len(tokens) * len(LOADS) * 3
        checks = self.doc["checks"] = []
        with torch.inference_mode():
            for T in tokens:
                for load in LOADS:
                    if self.left() < 3:
                        self.doc["notes"].append(f"budget spent before T={T} {load}")
                        break
                    target = max(0.05, min(0.4, (self.left() - 2) / max(1, n_meas)))
                    n_meas -= 3
                    b = self.load(T, load)
                    ok_g = peers["grouped_mm"] == "ok"
                    if ok_g:
                        self.record("grouped_mm", T, load,
                                    self.time_fn(lambda: self.gmm_ffn(b["xs"], b["offs"]), target), b)
                        self.record("grouped_mm_layer", T, load,
                                    self.time_fn(lambda: self.gmm_layer(b["x"], b["logits"]), target), b)
                        if T == CHECK_TOKENS:
                            self.cross_check(b, T, load)
                    if block is not None and T <= self.args.hf_max_tokens:
                        self.hf_set_logits(block, b["logits"])
                        xb = b["x"].unsqueeze(0)
                        self.record("hf_block", T, load,
                                    self.time_fn(lambda: block(xb), target), b)
                        if ok_g and T == CHECK_TOKENS:
                            ref = self.gmm_layer(b["x"], b["logits"]).float()
                            got = self.hf_out(block(xb)).reshape(T, -1).float()
                            rel = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
                            checks.append({"what": "hf_vs_grouped_mm_layer",
                                           "metric": "max abs diff / max abs ref",
                                           "T": T, "load": load, "value": rel, "ok": rel < 5e-2})
                    del b
        if block is not None and self.args.hf_max_tokens < max(tokens):
            self.doc["notes"].append(f"hf_block measured for T <= {self.args.hf_max_tokens} only")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--budget", type=float, default=90.0, help="seconds for the measurements")
    ap.add_argument("--tokens", default=",".join(map(str, DEFAULT_TOKENS)))
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=14336)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7, help="ExpertFfn::random seed of the bench")
    ap.add_argument("--x-seed", type=int, default=1234, help="hash seed of the activations")
    ap.add_argument("--hf-max-tokens", type=int, default=16384)
    ap.add_argument("--device", default="cuda", help="cpu: rehearse with small shapes")
    ap.add_argument("--ceiling-n", type=int, default=8192, help="matmul ceiling size")
    ap.add_argument("--copy-mib", type=int, default=1024, help="copy ceiling buffer")
    ap.add_argument("--self-test", action="store_true", help="check the hash only (no torch)")
    args = ap.parse_args()
    args.tokens = [int(t) for t in args.tokens.split(",") if t]
    t0 = time.monotonic()
    bad = self_test()
    if args.self_test:
        print("ffn_peers self-test:", "ok" if not bad else f"FAILED {bad}")
        return 1 if bad else 0
    doc = {"schema": 1, "python": platform.python_version(),
           "shape": {"experts": args.experts, "hidden": args.hidden,
                     "intermediate": args.intermediate, "k": args.k},
           "tokens": args.tokens, "loads": list(LOADS), "x_seed": args.x_seed,
           "hash_self_test": "ok" if not bad else bad}
    status, rc = "ok", 0
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        torch, status = None, f"unavailable: torch not available ({type(e).__name__}: {e})"
    if torch is not None:
        doc["torch"] = torch.__version__
        doc["torch_cuda"] = torch.version.cuda
        if args.device == "cuda" and not torch.cuda.is_available():
            status = "unavailable: torch sees no CUDA device"
    if bad:
        status, rc = f"failed: the Python hash does not match the pins: {bad}", 1
    if status == "ok":
        doc["device"] = torch.cuda.get_device_name(0) if args.device == "cuda" else args.device
        p = Peers(args, torch)
        p.doc = {**doc, **p.doc}
        try:
            p.run()
        except Exception as e:  # noqa: BLE001 - keep what was measured, say what broke
            import traceback
            traceback.print_exc()
            status, rc = f"failed: {type(e).__name__}: {e}"[:600], 1
        doc = p.doc
    doc["status"] = status
    doc["wall_s"] = round(time.monotonic() - t0, 1)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "peers.json"), "w") as f:
        json.dump(doc, f, indent=1)
    print(f"ffn_peers: {status} ({doc['wall_s']} s) -> {os.path.join(args.out, 'peers.json')}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
