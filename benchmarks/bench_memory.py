"""Peak memory of sharpscope's operations on GPT-2-style models (issue 26.5): a gradient, a
Hessian-vector product (HVP) in each mode, a GGN product, Lanczos top-5, Hutch++, one surface
point, a SAM step and an m-SAM step, each as MiB and as a ratio to the gradient's peak.

On the CPU each measurement runs in a fresh subprocess (benchmarks/_rss.py): the model, the
data and the objective are set up, then the operation's peak is the process's peak RSS minus
the RSS just before it, with glibc's ``MALLOC_MMAP_THRESHOLD_=65536`` so freed blocks go back
to the system. With ``--device cuda`` the peak is ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats`` minus the memory allocated before (marked cuda: not run on CPU-only
machines). The model's outputs are its logits (``GPT2LMHeadModel(...).logits``) and the loss
is the causal next-token cross-entropy averaged over the batch's tokens, equal per example
(every sequence has the same length), so the GGN (which refuses token-weighted losses) applies.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_memory.py --quick
    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_memory.py --sizes 1m,10m --seqs 64,256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _rss import measuring_env, peak_rss_above  # noqa: E402

OPS = ("grad", "hvp-forward-over-reverse", "hvp-reuse-graph", "hvp-finite-difference", "ggn", "lanczos-top5",
       "hutch++", "surface-point", "sam-step", "msam-step")
# name: (vocabulary, layers, width, heads): GPT-2 small is "124m" (tied embeddings: 124,439,808 at T=1024)
SIZES = {"tiny": (512, 1, 32, 2), "1m": (8192, 2, 96, 4), "10m": (16384, 4, 256, 4), "30m": (32768, 6, 512, 8),
         "124m": (50257, 12, 768, 12)}


def causal_cross_entropy(logits: Any, ids: Any) -> Any:
    """Mean over the batch's predicted tokens of -log softmax(logits[:, t])[ids[:, t + 1]]."""
    import torch.nn.functional as F

    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _setup(size: str, seq: int, batch: int, device: str) -> tuple[Any, Any, list]:
    """A GPT-2-style model returning its logits, and one batch of random token ids."""
    import torch
    from torch import nn

    from sharpscope.models import build_model, make_model_spec

    vocab, layers, width, heads = SIZES[size]

    class Logits(nn.Module):
        def __init__(self, lm: nn.Module) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.lm(ids).logits

    torch.manual_seed(0)
    lm = build_model(make_model_spec("gpt", input_shape=(seq,), num_classes=vocab, n_layer=layers, n_embd=width,
                                     n_head=heads))
    model = Logits(lm).to(device)
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0)).to(device)
    return model, causal_cross_entropy, [(ids, ids)]


def _operation(op: str, model: Any, loss_fn: Callable, data: list, lanczos_iter: int,
               lanczos: tuple[float | None, float] = (None, 1e-3)) -> Callable[[], Any]:
    """Build the objects ``op`` needs (outside the measurement) and return the call to measure."""
    import torch

    from sharpscope import curvature, hessian
    from sharpscope.landscape.surface import evaluate_points
    from sharpscope.objective import Objective
    from sharpscope.optim import SAM, sam_step

    if op in ("sam-step", "msam-step"):
        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=1e-3)
        (ids, targets), = data
        m = 1 if op == "msam-step" else None
        return lambda: sam_step(model, loss_fn, ids, targets, opt, m=m)
    if op == "surface-point":
        params = {n: p.detach() for n, p in model.named_parameters()}
        return lambda: evaluate_points(model, loss_fn, data, lambda k: (params, None), 1, chunk_size=len(data[0][0]))
    mode = op[4:] if op.startswith("hvp-") else ("reuse-graph" if op in ("ggn",) else "auto")
    obj = Objective(model, loss_fn, data, hvp_mode=mode)
    v = torch.randn(obj.n, generator=torch.Generator().manual_seed(1)).to(obj.device, obj.dtype)
    obj.loss()  # lazy imports and first-call set-up, without autograd
    if op == "grad":
        return lambda: obj.value_and_grad()
    if op.startswith("hvp-"):
        return lambda: obj.hvp(v)
    if op == "ggn":
        ggn = curvature.operator(obj, "ggn")
        return lambda: ggn.matvec(v)
    if op == "lanczos-top5":
        memory_gb, tol = lanczos  # --lanczos-memory GB (None: no budget), --lanczos-tol
        return lambda: hessian.eigenvalues(obj, k=5, max_iter=lanczos_iter, tol=tol, memory_gb=memory_gb)
    if op == "hutch++":
        return lambda: hessian.trace(obj, n_matvecs=6)
    raise ValueError(f"unknown operation {op!r}")


def one(op: str, size: str, seq: int, batch: int, device: str, lanczos_iter: int,
        lanczos: tuple[float | None, float] = (None, 1e-3)) -> dict:
    """Set up, then measure one operation in this process."""
    import torch

    from sharpscope.models import count_parameters

    model, loss_fn, data = _setup(size, seq, batch, device)
    call = _operation(op, model, loss_fn, data, lanczos_iter, lanczos)
    if device == "cuda":  # pragma: no cover - cuda
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = call()
        torch.cuda.synchronize()
        peak, wall = torch.cuda.max_memory_allocated() - base, float("nan")
    else:
        peak, wall, out = peak_rss_above(call)
    row = {"op": op, "size": size, "seq": seq, "batch": batch, "n_params": count_parameters(model),
           "peak_mib": peak / 2**20, "wall_s": wall, "threads": torch.get_num_threads()}
    if op == "lanczos-top5":
        row.update(n_hvp=out.n_hvp, converged=int(sum(out.converged)), eigenvalues=[float(x) for x in out.eigenvalues],
                   residuals=[float(x) for x in out.residuals])
    return row


def measure(op: str, size: str, seq: int, batch: int, device: str, lanczos_iter: int, timeout: float,
            lanczos_args: tuple[str, ...] = ()) -> dict:
    """:func:`one` in a fresh subprocess; an error row (with its last line) if it fails."""
    cmd = [sys.executable, os.path.abspath(__file__), "--one", op, "--sizes", size, "--seqs", str(seq),
           "--batch", str(batch), "--device", device, "--lanczos-iter", str(lanczos_iter), *lanczos_args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=measuring_env())
    except subprocess.TimeoutExpired:
        return {"op": op, "size": size, "seq": seq, "error": f"over {timeout:.0f} s"}
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"op": op, "size": size, "seq": seq, "error": tail[:160]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(rows: list[dict], grad: float | None) -> None:
    """Rows of one (size, sequence length) table: MiB, ratio to the gradient's peak ``grad``, seconds."""
    for r in rows:
        if "error" in r:
            print(f"  {r['op']:26s} n/a: {r['error']}", flush=True)
            continue
        ratio = f"{r['peak_mib'] / grad:6.2f}x" if grad else "     -"
        extra = f"  ({r['n_hvp']} HVPs, {r['converged']}/5 converged)" if "n_hvp" in r else ""
        if "eigenvalues" in r:
            extra += "\n      eigenvalues " + ", ".join(f"{x:.5g}" for x in r["eigenvalues"]) + "; residuals " + \
                ", ".join(f"{x:.1e}" for x in r["residuals"])
        print(f"  {r['op']:26s} {r['peak_mib']:10.1f} MiB {ratio} {r['wall_s']:8.2f} s{extra}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, 2 x 32 tokens (< 1 min)")
    ap.add_argument("--sizes", default="1m,10m", help=f"comma-separated, of {', '.join(SIZES)}")
    ap.add_argument("--seqs", default="64,256", help="comma-separated sequence lengths")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--lanczos-iter", type=int, default=30, help="Lanczos steps (basis vectors held) at most")
    ap.add_argument("--lanczos-memory", type=float, help="memory_gb of the Lanczos top-5 (default: no budget)")
    ap.add_argument("--lanczos-tol", type=float, default=1e-3, help="tol of the Lanczos top-5")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.sizes, a.seqs = "tiny", "32"
    sizes, seqs, ops = a.sizes.split(","), [int(s) for s in a.seqs.split(",")], a.ops.split(",")
    bad = [s for s in sizes if s not in SIZES] + [o for o in ops if o not in OPS]
    if bad or a.batch < 2:
        print(f"bench_memory: unknown size or operation {bad} (or batch < 2)", file=sys.stderr)
        raise SystemExit(2)
    if a.one:
        print(json.dumps(one(a.one, sizes[0], seqs[0], a.batch, a.device, a.lanczos_iter,
                             (a.lanczos_memory, a.lanczos_tol))))
        return
    print(f"peak memory above the set-up ({'RSS' if a.device == 'cpu' else 'CUDA max allocated'}), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    everything = []
    lanczos_args = ("--lanczos-tol", str(a.lanczos_tol)) + (
        ("--lanczos-memory", str(a.lanczos_memory)) if a.lanczos_memory is not None else ())
    for size in sizes:
        for seq in seqs:
            print(f"{size} ({'vocab %d, %d layers x %d wide, %d heads' % SIZES[size]}), batch {a.batch} x {seq}",
                  flush=True)
            rows: list[dict] = []
            for op in ops:  # printed as measured: a long run shows its rows so far
                rows.append(measure(op, size, seq, a.batch, a.device, a.lanczos_iter, a.timeout, lanczos_args))
                if len(rows) == 1 and "n_params" in rows[0]:
                    print(f"  {rows[0]['n_params']:,} parameters", flush=True)
                grad = rows[0].get("peak_mib") if rows[0]["op"] == "grad" else None
                report(rows[-1:], grad)
            everything += rows
    if a.json:
        with open(a.json, "w") as f:
            json.dump(everything, f, indent=1)


if __name__ == "__main__":
    main()
