"""SAM / SGD, RSAM / SGD and m-SAM / SGD step-time ratios, measured side by side in one process.

    python benchmarks/bench_sam.py                      # digits CNN (85k params), batch 128
    python benchmarks/bench_sam.py --model resnet20 --model-opt bn=true

Each round times ``--steps`` consecutive steps of every method, the methods in a rotating
order so that none always runs first; the reported figure per method is the median over
rounds of the mean step time, and the ratios are taken against plain SGD (same model,
same batch, same base optimizer settings). Two forward-backward passes make 2.0x the floor
for SAM; everything above it is the optimizer's own overhead. GSAM, WSAM and Friendly SAM take
SAM's two passes plus their own vector arithmetic; LookSAM (k = 5) takes two passes on one step
in five and one on the others (each run of ``--steps`` 20 holds four full steps). RSAM (random e) needs no gradient at
w: one forward without graph plus one forward-backward. ``m-sam`` is the default step (all chunks
at once with torch.func.vmap), ``m-sam loop`` the same step one chunk at a time.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from sharpscope import GSAM, RSAM, SAM, WSAM, FriendlySAM, LookSAM, sam_step
from sharpscope.data import load_dataset
from sharpscope.models import build_model, count_parameters, make_model_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--model-opt", action="append", default=[], help="KEY=VALUE (JSON value)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="steps per method per round")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layouts", action="store_true", help="also SAM with a channels-last model and batch, and "
                                                           "SAM through torch.compile (compiled in the warm-up)")
    args = ap.parse_args()

    import json
    kwargs = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.model_opt)}
    device = torch.device(args.device)
    data = load_dataset("digits")
    spec = make_model_spec(args.model, data.input_shape, data.num_classes, **kwargs)
    torch.manual_seed(0)
    base = build_model(spec).to(device).train()
    n = data.x_train.shape[0]
    batches = [(data.x_train[i:i + args.batch_size].to(device), data.y_train[i:i + args.batch_size].to(device))
               for i in range(0, n - args.batch_size + 1, args.batch_size)]
    m = max(1, args.batch_size // 8)
    sgd_kw = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)

    methods = {}
    names = ["sgd", "sam", "rsam", f"m-sam (m={m})", f"m-sam loop (m={m})", f"sgd in {args.batch_size // m} chunks"]
    variants = {"gsam": GSAM, "wsam": WSAM, "looksam (k=5)": LookSAM, "fsam": FriendlySAM}
    names += list(variants)
    names += ["sam channels-last", "sam compiled"] if args.layouts else []
    for name in names:
        model = copy.deepcopy(base)
        if name.startswith("sgd"):
            opt = torch.optim.SGD(model.parameters(), **sgd_kw)
        elif name == "rsam":
            opt = RSAM(model.parameters(), torch.optim.SGD, rho=0.05, **sgd_kw)
        elif name in variants:  # each with its defaults
            opt = variants[name](model.parameters(), torch.optim.SGD, rho=0.05, **sgd_kw)
        else:
            opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, **sgd_kw)
        if name == "sam channels-last":
            model = model.to(memory_format=torch.channels_last)
        if name == "sam compiled":
            model = torch.compile(model)
        methods[name] = (model, opt, m if "m-sam" in name else None)

    def run(name: str, steps: int) -> float:
        model, opt, chunk = methods[name]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for s in range(steps):
            x, y = batches[s % len(batches)]
            if name == "sam channels-last":
                x = x.contiguous(memory_format=torch.channels_last)
            if "chunks" in name:  # the floor of a chunked loop: one SGD pass per chunk of m examples
                for lo in range(0, x.shape[0], m):
                    sam_step(model, F.cross_entropy, x[lo:lo + m], y[lo:lo + m], opt)
            else:
                sam_step(model, F.cross_entropy, x, y, opt, m=chunk, vectorize=False if "loop" in name else None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps

    for name in methods:  # warm-up
        run(name, 3)
    times: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            times[name].append(run(name, args.steps))

    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"model {args.model} {kwargs or ''} ({count_parameters(base):,} parameters), batch {args.batch_size}, "
          f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.rounds} rounds x {args.steps} steps")
    print(f"{'method':<20}{'ms/step':>10}{'vs SGD':>9}")
    for name in names:
        print(f"{name:<20}{1e3 * med[name]:>10.2f}{med[name] / med['sgd']:>8.2f}x")


if __name__ == "__main__":
    main()
