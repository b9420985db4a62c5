"""Gradient accumulation with SAM (issue 25, item 4): ``sam_step(..., accumulate=N)`` and
``train --grad-accum N``.

The reference is SAM as the paper writes it (Foret et al. 2021, Sec. 2), computed here with
``torch.func`` on the whole batch in float64: g = grad L(w) of the batch's mean loss,
e = rho g / ||g|| (ASAM: e = rho T^2 g / ||T g||, T = |w| + eta on the parameters named
``weight``), then the update w - lr (grad L(w + e) + wd w). sharpscope's accumulated step runs
the same maths micro-batch by micro-batch; the two differ only by the order in which float64
sums are taken (each micro-batch's gradient is a sum over its examples, weighted and added to
``.grad``, where the reference sums every example at once), i.e. a few units of float64 rounding
(2.2e-16) of numbers of order 1. Measured: at most 5.6e-17 from the reference for SAM and ASAM
(2, 3 and 10 micro-batches), at most 2.8e-16 between accumulated and full-batch steps of every
registered optimizer over three steps (LookSAM's; the others 1.1e-16 or less). TOL = 1e-12
leaves three orders of magnitude of room and is five orders below what a wrong weighting or a
second weight decay changes (> 1e-6, checked).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpscope.errors import ConfigError
from sharpscope.optim import ASAM, SAM, asam_groups, frozen_bn_stats, registry, sam_step
from sharpscope.optim.passes import check_accumulate, micro_batch_count, micro_slices
from sharpscope.train import TrainConfig, train
from sharpscope.train.config import make_optimizer

TOL = 1e-12
LR, WD, RHO = 0.1, 5e-3, 0.05


def _model(bn: bool = False, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(5, 7)] + ([nn.BatchNorm1d(7)] if bn else []) + [nn.Tanh()]
    layers += ([nn.Dropout(dropout)] if dropout else []) + [nn.Linear(7, 3)]
    return nn.Sequential(*layers).double()


def _data(n: int = 10, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([w.detach().reshape(-1) for w in model.parameters()])


def _grad(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
          ) -> dict[str, torch.Tensor]:
    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(torch.func.functional_call(model, p, (x,)), y)
    return torch.func.grad(loss)(params)


def _reference_sam(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rho: float, adaptive: bool = False,
                   eta: float = 0.01, perturbation_wd: bool = False) -> torch.Tensor:
    """The weights after one SAM (ASAM) step from the full batch (module docstring), flat."""
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = _grad(model, w, x, y)
    if perturbation_wd:  # e from the gradient of loss + L2 term (google-research/sam)
        g = {n: g[n] + WD * w[n] for n in w}
    t = {n: (w[n].abs() + eta if adaptive and "weight" in n else torch.ones_like(w[n])) for n in w}
    norm = torch.sqrt(sum(((t[n] * g[n]) ** 2).sum() for n in w))
    shifted = {n: w[n] + rho * t[n] ** 2 * g[n] / norm for n in w}
    g_sam = _grad(model, shifted, x, y)
    return torch.cat([(w[n] - LR * (g_sam[n] + WD * w[n])).reshape(-1) for n in w])


def _reference_m_sam(model: nn.Module, x: torch.Tensor, y: torch.Tensor, m: int) -> torch.Tensor:
    """m-SAM from its definition: each chunk of m its own e_k = rho g_k / ||g_k||, the update's
    gradient the mean over chunks of grad L_k(w + e_k) (equal chunks)."""
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    total = {n: torch.zeros_like(v) for n, v in w.items()}
    chunks = range(0, x.shape[0], m)
    for lo in chunks:
        xs, ys = x[lo:lo + m], y[lo:lo + m]
        g = _grad(model, w, xs, ys)
        norm = torch.sqrt(sum((v ** 2).sum() for v in g.values()))
        g_sam = _grad(model, {n: w[n] + RHO * g[n] / norm for n in w}, xs, ys)
        total = {n: total[n] + g_sam[n] / len(chunks) for n in w}
    return torch.cat([(w[n] - LR * (total[n] + WD * w[n])).reshape(-1) for n in w])


def _sam(model: nn.Module, **kw) -> SAM:
    return SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=0.9, weight_decay=WD, **kw)


# -- micro-batches -------------------------------------------------------------------------
def test_micro_slices_are_tensor_split_and_cover_the_batch():
    for batch in (1, 7, 10, 64):
        for n in range(1, batch + 1):
            slices = micro_slices(batch, n)
            sizes = [s.stop - s.start for s in slices]
            assert sizes == [len(t) for t in torch.tensor_split(torch.arange(batch), n)]
            assert slices[0].start == 0 and slices[-1].stop == batch
    assert micro_batch_count(4, 3) == 3 and micro_batch_count(4, 64) == 4


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "2", 11])
def test_bad_accumulate_is_refused(bad):
    with pytest.raises(ConfigError, match="accumulate"):
        check_accumulate(bad, 10)
    model = _model()
    x, y = _data()
    with pytest.raises(ConfigError, match="accumulate"):
        sam_step(model, F.cross_entropy, x, y, _sam(model), accumulate=bad)


# -- the accumulated step is the full-batch step -------------------------------------------------
@pytest.mark.parametrize("accumulate", [1, 2, 3, 10])
@pytest.mark.parametrize("kind", ["sam", "asam", "sam_perturbation_wd"])
def test_accumulated_step_equals_the_paper_full_batch_step(kind, accumulate):
    """10 examples in 1, 2, 3 (4 + 3 + 3: unequal) and 10 micro-batches, against the explicit
    full-batch SAM / ASAM step; weight decay (in the update, and in e with
    perturbation_weight_decay) applied once."""
    model, (x, y) = _model(), _data()
    if kind == "asam":
        opt = ASAM(asam_groups(model, eta=0.01), torch.optim.SGD, rho=0.5, lr=LR, momentum=0.9, weight_decay=WD)
        want = _reference_sam(model, x, y, 0.5, adaptive=True)
    else:
        pwd = kind == "sam_perturbation_wd"
        opt = _sam(model, perturbation_weight_decay=pwd)
        want = _reference_sam(model, x, y, RHO, perturbation_wd=pwd)
    result = sam_step(model, F.cross_entropy, x, y, opt, accumulate=accumulate)
    assert (_flat(model) - want).abs().max() < TOL
    with torch.no_grad():
        full_loss = F.cross_entropy(_model()(x), y)
    assert abs(float(result.loss) - float(full_loss)) < TOL
    assert result.outputs.shape == (10, 3)


def test_the_test_sees_a_wrong_weighting_and_a_repeated_weight_decay():
    """What the tolerance guards against: the plain mean of the micro-batch means (4 + 3 + 3) and
    weight decay applied per micro-batch both move the step by far more than TOL."""
    model, (x, y) = _model(), _data()
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    parts = micro_slices(10, 3)
    unweighted = {n: sum(_grad(model, w, x[s], y[s])[n] for s in parts) / 3 for n in w}
    weighted = _grad(model, w, x, y)
    assert max(float((unweighted[n] - weighted[n]).abs().max()) for n in w) > 1e-6
    assert LR * WD * 2 * float(_flat(model).abs().max()) > 1e-6


def _variant_config(name: str) -> TrainConfig:
    options = {"k": 2} if name == "looksam" else {}  # LookSAM: a full step, then one reusing g_v, ...
    return TrainConfig(optimizer=name, lr=LR, weight_decay=WD, optimizer_options=options)


@pytest.mark.parametrize("name", registry.names())
def test_every_registered_optimizer_accumulates_to_its_full_batch_step(name):
    """Every name ``--optimizer`` takes (SGD, SAM, ASAM, RSAM, GSAM, WSAM, LookSAM, Friendly SAM,
    and any added later): three steps on three batches, accumulated over 3 unequal
    micro-batches, against the same three full-batch steps (the full-batch steps themselves are
    tested against each variant's reference in test_sam_family / test_rsam / test_optim).
    Their state (momentum, LookSAM's cycle, Friendly SAM's average, RSAM's generator) is
    updated once per step either way."""
    config = _variant_config(name)
    runs = []
    for accumulate in (1, 3):
        model = _model()
        opt = make_optimizer(config, model)
        losses = []
        for step in range(3):
            x, y = _data(10, seed=step)
            losses.append(float(sam_step(model, F.cross_entropy, x, y, opt, accumulate=accumulate).loss))
        runs.append((_flat(model), losses))
    (w1, l1), (w3, l3) = runs
    assert (w1 - w3).abs().max() < TOL
    assert max(abs(a - b) for a, b in zip(l1, l3)) < TOL
    assert (w1 - _flat(_model())).abs().max() > 1e-4  # the steps moved the weights


def test_plain_torch_optimizer_accumulates():
    model_a, model_b, (x, y) = _model(), _model(), _data()
    for model, n in ((model_a, 1), (model_b, 4)):
        sam_step(model, F.cross_entropy, x, y, torch.optim.SGD(model.parameters(), lr=LR, weight_decay=WD),
                 accumulate=n)
    assert (_flat(model_a) - _flat(model_b)).abs().max() < TOL


class _DictModel(nn.Module):
    """A model whose batch is a dict of tensors (Hugging Face style fields)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _model()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(batch["features"] * batch["scale"])


def test_pytree_batches_are_cut_into_micro_batches_too():
    x, y = _data()
    batch = {"features": x, "scale": torch.linspace(0.5, 1.5, 10, dtype=torch.float64)[:, None]}
    runs = []
    for accumulate in (1, 3):
        model = _DictModel()
        result = sam_step(model, F.cross_entropy, batch, y, _sam(model), accumulate=accumulate)
        runs.append((_flat(model), result.outputs))
    assert (runs[0][0] - runs[1][0]).abs().max() < TOL
    assert (runs[0][1] - runs[1][1]).abs().max() < TOL


# -- accumulate=1 is the step as it was ----------------------------------------------------------
def test_accumulate_one_is_bit_identical_to_the_hand_driven_step():
    """accumulate=1 (the default) runs exactly the passes of a SAM step driven by hand (davda54's
    recipe with the clean pass's batch-norm statistics): the same bits."""
    model_a, model_b, (x, y) = _model(bn=True), _model(bn=True), _data()
    sam_step(model_a, F.cross_entropy, x, y, _sam(model_a), accumulate=1)
    opt = _sam(model_b)
    F.cross_entropy(model_b(x), y).backward()
    opt.first_step(zero_grad=True)
    with frozen_bn_stats(model_b):
        F.cross_entropy(model_b(x), y).backward()
    opt.second_step(zero_grad=True)
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


# -- m-SAM ---------------------------------------------------------------------------------------
def test_m_equal_to_the_micro_batch_gives_each_micro_batch_its_own_perturbation():
    """accumulate=3 with m = 4 on 12 examples: each micro-batch of 4 gets its own e_k, which is
    exactly m-SAM with m = 4 (against its definition) and the m-SAM loop without accumulation,
    bit for bit."""
    x, y = _data(12)
    model = _model()
    sam_step(model, F.cross_entropy, x, y, _sam(model), m=4, accumulate=3)
    assert (_flat(model) - _reference_m_sam(_model(), x, y, 4)).abs().max() < TOL
    loop = _model()
    sam_step(loop, F.cross_entropy, x, y, _sam(loop), m=4, vectorize=False)
    assert torch.equal(_flat(model), _flat(loop))


def test_m_sam_under_accumulation_is_m_sam_and_never_vectorized():
    """m smaller than the micro-batches (m = 2, micro-batches of 4): still m-SAM with m = 2 over
    the whole batch (its chunks run one at a time already); vectorize=True is refused."""
    x, y = _data(12)
    model, loop = _model(), _model()
    sam_step(model, F.cross_entropy, x, y, _sam(model), m=2, accumulate=3)
    sam_step(loop, F.cross_entropy, x, y, _sam(loop), m=2, vectorize=False)
    assert torch.equal(_flat(model), _flat(loop))
    assert (_flat(model) - _reference_m_sam(_model(), x, y, 2)).abs().max() < TOL
    with pytest.raises(ConfigError, match="vectorize=True"):
        sam_step(model, F.cross_entropy, x, y, _sam(model), m=2, accumulate=3, vectorize=True)


# -- batch norm, dropout, the gradient scaler, second order ---------------------------------------
@pytest.mark.parametrize("name,second_order", [("sam", False), ("rsam", False), ("sam", True)])
def test_batch_norm_statistics_are_updated_per_micro_batch_of_the_pass_at_w(name, second_order):
    """Running statistics: one momentum update per micro-batch forward of the pass at w (at the
    weights w, in order), none from the pass at w + e (nor from second-order SAM's third pass);
    num_batches_tracked grows by N. Without accumulation the same rule gives the single update
    of the whole batch (as before)."""
    x, y = _data(10)
    for accumulate in (1, 2, 3):
        model = _model(bn=True)
        reference = copy.deepcopy(model).train()
        with torch.no_grad():
            for part in micro_slices(10, accumulate):
                reference(x[part])
        opt = make_optimizer(TrainConfig(optimizer=name, lr=LR, weight_decay=WD), model)
        sam_step(model, F.cross_entropy, x, y, opt, accumulate=accumulate, second_order=second_order)
        got, want = model[1], reference[1]
        assert int(got.num_batches_tracked) == accumulate
        assert torch.allclose(got.running_mean, want.running_mean, rtol=0, atol=1e-15)
        assert torch.allclose(got.running_var, want.running_var, rtol=0, atol=1e-15)


def test_with_batch_norm_the_micro_batches_normalize_apart():
    """Stated, not hidden: in train mode batch norm normalizes each micro-batch with its own
    statistics, so the accumulated step is not the full-batch step for such a model."""
    x, y = _data(10)
    full, accumulated = _model(bn=True), _model(bn=True)
    sam_step(full, F.cross_entropy, x, y, _sam(full))
    sam_step(accumulated, F.cross_entropy, x, y, _sam(accumulated), accumulate=2)
    assert (_flat(full) - _flat(accumulated)).abs().max() > 1e-6


def test_same_dropout_mask_replays_every_micro_batch():
    """rho = 0 and the masks replayed: the pass at w + e is the pass at w, micro-batch by
    micro-batch, so the two losses are the same bits; drawn afresh they differ."""
    x, y = _data(10)
    for same in (True, False):
        model = _model(dropout=0.5)
        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.0, lr=LR)
        result = sam_step(model, F.cross_entropy, x, y, opt, accumulate=3, same_dropout_mask=same)
        assert torch.equal(result.loss, result.perturbed_loss) == same


def test_gradient_scaler_steps_and_updates_once_per_step():
    """Under a GradScaler every micro-batch's loss is scaled and the scaler unscales, checks and
    updates once per step: growth_interval = 1 doubles the scale once, and the step (a power of
    two scale, float64) is the unscaled accumulated step."""
    x, y = _data(10)
    model, plain = _model(), _model()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1)
    result = sam_step(model, F.cross_entropy, x, y, _sam(model), scaler=scaler, accumulate=3)
    sam_step(plain, F.cross_entropy, x, y, _sam(plain), accumulate=3)
    assert not result.skipped and scaler.get_scale() == 2.0 ** 11
    assert (_flat(model) - _flat(plain)).abs().max() < TOL


def _reference_second_order(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The weights after one second-order SAM step: the update's gradient is d/dw L(w + e_hat(w)),
    e_hat(w) = rho g(w) / ||g(w)||, by autograd through e_hat on the flat weight vector."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [w.shape for w in model.parameters()]
    sizes = [w.numel() for w in model.parameters()]
    flat = _flat(model)

    def loss(v: torch.Tensor) -> torch.Tensor:
        params = {n: c.view(s) for n, c, s in zip(names, v.split(sizes), shapes)}
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    def perturbed(v: torch.Tensor) -> torch.Tensor:
        g = torch.func.grad(loss)(v)
        return loss(v + RHO * g / g.norm())
    return flat - LR * (torch.func.grad(perturbed)(flat) + WD * flat)


@pytest.mark.parametrize("accumulate", [1, 3])
def test_second_order_sam_accumulates_its_hessian_term(accumulate):
    """Second-order SAM over 4 + 3 + 3 micro-batches (its H(w) u summed over them) against the
    gradient of L(w + e_hat(w)) by autograd through e_hat, on the whole batch."""
    model, (x, y) = _model(), _data()
    want = _reference_second_order(_model(), x, y)
    sam_step(model, F.cross_entropy, x, y, _sam(model), second_order=True, accumulate=accumulate)
    assert (_flat(model) - want).abs().max() < TOL
    first_order = _model()
    sam_step(first_order, F.cross_entropy, x, y, _sam(first_order))
    assert (_flat(first_order) - want).abs().max() > 1e-6  # the Hessian term is there


class _RecordedDropout(nn.Module):
    """Dropout that keeps every mask it draws (one per forward), in order."""

    def __init__(self) -> None:
        super().__init__()
        self.masks: list[torch.Tensor] = []

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mask = (torch.rand(h.shape, dtype=h.dtype) < 0.5).to(h.dtype) * 2.0
        self.masks.append(mask)
        return h * mask


def test_second_order_third_pass_replays_the_masks_of_the_pass_at_w():
    """Accumulated second-order SAM takes H(w) u from a third forward at w per micro-batch: it
    draws the dropout masks of that micro-batch's first forward (the full-batch step's double
    backward reuses its one graph at w, masks included); the pass at w + e draws its own."""
    torch.manual_seed(0)
    drop = _RecordedDropout()
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), drop, nn.Linear(7, 3)).double()
    x, y = _data()
    sam_step(model, F.cross_entropy, x, y, _sam(model), second_order=True, accumulate=3)
    first, at_e, third = drop.masks[0:3], drop.masks[3:6], drop.masks[6:9]
    assert len(drop.masks) == 9
    assert all(torch.equal(a, c) for a, c in zip(first, third))
    assert not all(torch.equal(a, b) for a, b in zip(first, at_e))


# -- training and the command line ----------------------------------------------------------------
TINY = dict(data="synthetic", model="mlp", model_kwargs={"hidden": [8]}, n_train=64, epochs=1, batch_size=32,
            keep_snapshots=False)


def test_train_with_grad_accum_matches_the_full_batch_run(tmp_path):
    """An MLP (no batch norm) trained one epoch with --grad-accum 4 ends where the run without it
    ends, to float32 rounding over two steps (measured 1.5e-8 on weights up to 0.35; bound 1e-6)."""
    weights = []
    for n in (1, 4):
        result = train(TrainConfig(**TINY, grad_accum=n), tmp_path / f"run{n}")
        state = torch.load(result.checkpoint, weights_only=True)["model_state"]
        weights.append(torch.cat([v.reshape(-1).double() for v in state.values()]))
    assert (weights[0] - weights[1]).abs().max() < 1e-6


@pytest.mark.parametrize("options,fragment", [
    (dict(grad_accum=0), "--grad-accum must be >= 1"),
    (dict(grad_accum=-1), "--grad-accum must be >= 1"),
    (dict(grad_accum=33), "cannot split a batch of 32"),
    (dict(grad_accum=4, optimizer="sam", m=16), "--m 16 is larger than the micro-batches"),
])
def test_train_config_refuses(options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        TrainConfig(**{**TINY, **options})
    TrainConfig(**{**TINY, "grad_accum": 4, "m": 8})  # m-SAM chunks within the micro-batches: fine


def test_cli_train_with_grad_accum(cli, tmp_path):
    """The issue's command: sharpscope train --grad-accum 4 --optimizer sam --epochs 1 --n-train 200."""
    code, out, err = cli(["train", "--grad-accum", "4", "--optimizer", "sam", "--epochs", "1", "--n-train", "200",
                          "--no-progress", "--no-snapshots", "--out", str(tmp_path / "run")])
    assert code == 0, err
    assert (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("verb", ["train", "compare", "sweep"])
@pytest.mark.parametrize("value,fragment", [("0", "must be >= 1"), ("-1", "must be >= 1"),
                                            ("65", "cannot split a batch of 64")])
def test_cli_bad_grad_accum_is_one_line(cli, tmp_path, verb, value, fragment):
    extra = {"train": [], "compare": ["--profile", "quick"], "sweep": ["--optimizer", "sgd,sam"]}[verb]
    code, _, err = cli([verb, *extra, "--grad-accum", value, "--batch-size", "64", "--no-progress",
                        "--out", str(tmp_path / "out")])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("sharpscope: error: ") and fragment in lines[0], lines[0]


# -- data-parallel ranks ------------------------------------------------------------------------
def ranks_train(out: str, config: dict) -> None:
    """One training run on this rank (module level: the spawned ranks import it by name)."""
    train(TrainConfig(**config), out)


@pytest.mark.slow
def test_two_ranks_accumulate_to_global_batch_sam(tmp_path):
    """Two gloo ranks, each splitting its half of the batch into 2 micro-batches (every one but
    the last back-propagated under no_sync), with one perturbation from the all-reduced gradient:
    global-batch SAM of one process without accumulation, to float32 rounding."""
    import torch.distributed as dist
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    from _ranks import run_on_ranks
    config = dict(optimizer="sam", model="mlp", model_kwargs={"hidden": [12]}, n_train=200, epochs=2, batch_size=40,
                  lr=0.1, keep_snapshots=False, seed=3)
    run_on_ranks(tmp_path, ranks_train, str(tmp_path / "ddp"), {**config, "sync_perturbation": True, "grad_accum": 2})
    train(TrainConfig(**config), tmp_path / "one")
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["model_state"] for d in ("ddp", "one"))
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) < 1e-5
