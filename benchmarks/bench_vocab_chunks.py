"""Peak memory of a gradient, Hessian-vector products in each mode and a GGN product with and
without chunked cross-entropy over a large vocabulary (issue 26.3), on a small GPT-2-style model.

Each measurement runs in a fresh subprocess (so one measurement's allocations cannot hide
another's): the model, the data and the objective are set up, and the operation's peak is the
process's peak resident set size during it minus the RSS just before it
(:func:`_rss.peak_rss_above`), with glibc's ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed
blocks go back to the system and the RSS tracks the live tensors (benchmarks/_rss.py; glibc's
default threshold rises to 32 MiB after a large free, and the peak then measures the
allocator's retention: 642 MiB instead of 51 MiB for the chunked head at 8 tokens per chunk).
Peak memory does not depend on a busy CPU; the times do.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_vocab_chunks.py [--vocab 50257] [--seq 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _rss import measuring_env, peak_rss_above  # noqa: E402

CASES = [("grad", "finite-difference"), ("grad", "forward-over-reverse"), ("hvp", "finite-difference"),
         ("hvp", "forward-over-reverse"), ("hvp", "reuse-graph"), ("ggn", "forward-over-reverse")]


def one(op: str, mode: str, chunk: int, vocab: int, seq: int, batch: int, width: int, layers: int) -> dict:
    """Set up, then measure one operation (in this process)."""
    import torch

    from sharpscope import curvature
    from sharpscope.models.registry import build_model, make_model_spec
    from sharpscope.objective import Objective
    from sharpscope.tokens import TokenLoss
    from sharpscope.vocab_chunks import ChunkedTokenLoss

    torch.manual_seed(0)
    model = build_model(make_model_spec("gpt", input_shape=(seq,), num_classes=vocab, n_layer=layers, n_embd=width,
                                        n_head=2))
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    loss = ChunkedTokenLoss("causal", chunk_tokens=chunk) if chunk else TokenLoss("causal")
    obj = Objective(model, loss, [{"input_ids": ids, "labels": ids}], hvp_mode=mode)
    v = torch.randn(obj.n, generator=torch.Generator().manual_seed(1))
    obj.loss()  # touch the code paths once (lazy imports), without autograd
    if op == "grad":
        fn = obj.grad
    elif op == "hvp":
        fn = lambda: obj.hvp(v)  # noqa: E731
    else:
        ggn = curvature.operator(obj, "ggn")
        fn = lambda: ggn.matvec(v)  # noqa: E731
    peak, wall, out = peak_rss_above(fn)
    return {"op": op, "mode": mode, "chunk": chunk, "peak_mb": peak / 2**20, "wall_s": wall,
            "n_params": obj.n, "norm": float(out.double().norm())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=32, help="tokens per chunk of the chunked loss")
    ap.add_argument("--ops", default="grad,hvp,ggn", help="which operations (comma-separated)")
    ap.add_argument("--one", nargs=3, metavar=("OP", "MODE", "CHUNK"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1], int(a.one[2]), a.vocab, a.seq, a.batch, a.width, a.layers)))
        return
    print(f"vocabulary {a.vocab:,}, {a.batch} x {a.seq} tokens, GPT-2 style {a.layers} layers x {a.width} wide; "
          f"chunked: {a.chunk} tokens per chunk; peak RSS above the set-up process, MiB")
    print(f"{'operation':34s} {'full':>9s} {'chunked':>9s} {'ratio':>6s} {'time full/chunked (s)':>22s}")
    for op, mode in [c for c in CASES if c[0] in a.ops.split(",")]:
        rows = []
        for chunk in (0, a.chunk):
            cmd = [sys.executable, __file__, "--one", op, mode, str(chunk), "--vocab", str(a.vocab), "--seq",
                   str(a.seq), "--batch", str(a.batch), "--width", str(a.width), "--layers", str(a.layers)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=measuring_env())
            if done.returncode:
                raise SystemExit(done.stderr[-2000:])
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        full, chunked = rows
        label = {"grad": f"gradient by {'backward()' if mode == 'finite-difference' else 'torch.func'}",
                 "hvp": f"HVP {mode}", "ggn": "GGN product"}[op]
        print(f"{label:34s} {full['peak_mb']:9.0f} {chunked['peak_mb']:9.0f} "
              f"{full['peak_mb'] / max(chunked['peak_mb'], 1e-9):6.2f} {full['wall_s']:10.2f} / {chunked['wall_s']:.2f}"
              f"   (|out| {full['norm']:.6g} vs {chunked['norm']:.6g})", flush=True)


if __name__ == "__main__":
    main()
