"""GSAM, WSAM, LookSAM and Friendly SAM: against references written from the papers (flat
float64 vectors, every step by hand) and, step by step, against pytorch-optimizer 4.1.

``python tests/test_sam_family.py`` prints the equivalence table of docs/sam-family.md.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from sharpscope import GSAM, SAM, WSAM, FriendlySAM, LookSAM, sam_step
from sharpscope.errors import ConfigError

LR, MOMENTUM, WD, RHO, STEPS = 0.2, 0.9, 5e-4, 0.05, 20


def _problem(dtype: torch.dtype = torch.float64, one_tensor: bool = False, seed: int = 0):
    """A tanh MLP (or, with ``one_tensor``, a bias-free linear softmax regression) and a batch."""
    torch.manual_seed(seed)
    model = (nn.Linear(6, 3, bias=False) if one_tensor
             else nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))).to(dtype)
    x = torch.randn(32, 6, dtype=dtype)
    y = torch.randint(0, 3, (32,))
    return model, x, y


def _lr(t: int) -> float:
    """A cosine schedule over the STEPS steps (so that GSAM's radius moves)."""
    return LR * 0.5 * (1.0 + math.cos(math.pi * t / STEPS))


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([w.detach().reshape(-1) for w in model.parameters()])


def _grad_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """w (flat) -> grad L(w), through ``functional_call`` on a copy of the shapes."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [w.shape for w in model.parameters()]
    sizes = [w.numel() for w in model.parameters()]

    def loss(w: torch.Tensor) -> torch.Tensor:
        params = {n: c.view(s) for n, c, s in zip(names, w.split(sizes), shapes)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    return torch.func.grad(loss)


class _SGD:
    """torch.optim.SGD's update with momentum and coupled weight decay, by hand."""

    def __init__(self) -> None:
        self.buf: torch.Tensor | None = None

    def __call__(self, w: torch.Tensor, d: torch.Tensor, lr: float) -> torch.Tensor:
        d = d + WD * w
        self.buf = d.clone() if self.buf is None else MOMENTUM * self.buf + d
        return w - lr * self.buf


def _reference(variant: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, **opts) -> torch.Tensor:
    """STEPS steps of ``variant`` written from its paper (module docstrings of sharpscope.optim)."""
    grad = _grad_fn(model, x, y)
    w, sgd = _flat(model).clone(), _SGD()
    gv, m = None, None
    for t in range(STEPS):
        lr = _lr(t)
        g = grad(w)
        if variant == "gsam":
            alpha, rho_min = opts.get("alpha", 0.4), opts.get("rho_min", 0.0)
            rho_t = rho_min + (RHO - rho_min) * lr / LR
            gp = grad(w + rho_t * g / g.norm())
            g_perp = g - (g @ gp) / (gp @ gp) * gp
            w = sgd(w, gp - alpha * g_perp, lr)
        elif variant == "wsam":
            alpha = opts.get("gamma", 0.9) / (1 - opts.get("gamma", 0.9))
            gp = grad(w + RHO * g / g.norm())
            if opts.get("decouple", True):
                w = sgd(w, g, lr) - lr * alpha * (gp - g)
            else:
                w = sgd(w, g + alpha * (gp - g), lr)
        elif variant == "looksam":
            k, alpha = opts.get("k", 5), opts.get("alpha", 0.7)
            if t % k == 0:
                gs = grad(w + RHO * g / g.norm())
                gv = gs - (gs @ g) / (g @ g) * g
                w = sgd(w, gs, lr)
            else:
                w = sgd(w, g + alpha * g.norm() / gv.norm() * gv, lr)
        elif variant == "fsam":
            sigma, lmbda = opts.get("sigma", 1.0), opts.get("lmbda", 0.9)
            if m is None:
                d, m = g, g.clone()
            else:
                d, m = g - sigma * m, lmbda * m + (1 - lmbda) * g
            w = sgd(w, grad(w + RHO * d / d.norm()), lr)
        else:
            raise ValueError(variant)
    return w


_CLASSES = {"gsam": GSAM, "wsam": WSAM, "looksam": LookSAM, "fsam": FriendlySAM}


def _ours(variant: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, **opts) -> SAM:
    opt = _CLASSES[variant](model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOMENTUM,
                            weight_decay=WD, **opts)
    for t in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = _lr(t)
        sam_step(model, F.cross_entropy, x, y, opt)
    return opt


@pytest.mark.parametrize("variant,opts", [
    ("gsam", {}), ("gsam", {"alpha": 0.1, "rho_min": 0.02}),
    ("wsam", {}), ("wsam", {"decouple": False, "gamma": 0.7}),
    ("looksam", {}), ("looksam", {"k": 3, "alpha": 0.3}),
    ("fsam", {}), ("fsam", {"sigma": 0.5, "lmbda": 0.6}),
])
def test_variant_matches_the_papers_update_in_float64(variant, opts):
    """20 steps on a 3-tensor MLP under a cosine schedule equal the flat reference: float64
    rounding over 20 steps of O(1) weights stays below 1e-12 (measured <= 5e-15)."""
    model, x, y = _problem()
    expected = _reference(variant, model, x, y, **opts)
    _ours(variant, model, x, y, **opts)
    assert (_flat(model) - expected).abs().max() < 1e-12
    assert (expected - _flat(_problem()[0])).abs().max() > 1e-3  # the weights did move


def test_gsam_with_alpha_zero_and_constant_radius_is_sam():
    """alpha = 0 and rho_min = rho make GSAM exactly SAM (same code path for e and the update)."""
    model, x, y = _problem()
    twin = _problem()[0]
    gsam = GSAM(model.parameters(), torch.optim.SGD, rho=RHO, rho_min=RHO, alpha=0.0, lr=LR, momentum=MOMENTUM)
    sam = SAM(twin.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOMENTUM)
    for t in range(5):
        for opt in (gsam, sam):
            for group in opt.param_groups:
                group["lr"] = _lr(t)
        sam_step(model, F.cross_entropy, x, y, gsam)
        sam_step(twin, F.cross_entropy, x, y, sam)
    assert torch.equal(_flat(model), _flat(twin))


def test_wsam_with_gamma_one_half_is_sam_when_coupled():
    """gamma = 1/2 (alpha = 1), coupled: g + (g_p - g) = g_p, SAM's gradient (to rounding)."""
    model, x, y = _problem()
    twin = _problem()[0]
    wsam = WSAM(model.parameters(), torch.optim.SGD, rho=RHO, gamma=0.5, decouple=False, lr=LR)
    sam = SAM(twin.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    for _ in range(5):
        sam_step(model, F.cross_entropy, x, y, wsam)
        sam_step(twin, F.cross_entropy, x, y, sam)
    assert (_flat(model) - _flat(twin)).abs().max() < 1e-14


def _count_forwards(model: nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_looksam_takes_one_pass_between_its_full_steps():
    """k = 5 over 10 steps: 2 full steps (2 passes each) + 8 one-pass steps = 12 forward passes,
    against SAM's 20; the reused steps report no perturbed loss."""
    model, x, y = _problem()
    calls = _count_forwards(model)
    opt = LookSAM(model.parameters(), torch.optim.SGD, rho=RHO, k=5, lr=LR)
    perturbed = [sam_step(model, F.cross_entropy, x, y, opt).perturbed_loss is not None for _ in range(10)]
    assert calls[0] == 12
    assert perturbed == [True, False, False, False, False] * 2
    model2, _, _ = _problem()
    calls2 = _count_forwards(model2)
    sam = SAM(model2.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    for _ in range(10):
        sam_step(model2, F.cross_entropy, x, y, sam)
    assert calls2[0] == 20


def test_looksam_step_with_a_closure_takes_one_pass_between_full_steps():
    model, x, y = _problem()
    calls = _count_forwards(model)
    opt = LookSAM(model.parameters(), torch.optim.SGD, rho=RHO, k=5, lr=LR)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    assert calls[0] == 6
    expected = _problem()[0]
    _ours_model, _, _ = _problem()
    opt2 = LookSAM(_ours_model.parameters(), torch.optim.SGD, rho=RHO, k=5, lr=LR)
    for _ in range(5):
        sam_step(_ours_model, F.cross_entropy, x, y, opt2)
    assert torch.allclose(_flat(model), _flat(_ours_model), rtol=0, atol=1e-14)
    assert not torch.equal(_flat(model), _flat(expected))


@pytest.mark.parametrize("variant", ["looksam", "fsam", "gsam", "wsam"])
def test_resumed_variant_continues_bit_for_bit(variant):
    """7 steps, state_dict into a fresh optimizer, 6 more steps == 13 uninterrupted steps
    (LookSAM's counter and g_v and Friendly SAM's moving average are in the state dict)."""
    model, x, y = _problem()
    straight = _problem()[0]
    make = lambda params: _CLASSES[variant](params, torch.optim.SGD, rho=RHO, lr=LR, momentum=MOMENTUM)  # noqa: E731
    opt_a = make(straight.parameters())
    for _ in range(13):
        sam_step(straight, F.cross_entropy, x, y, opt_a)
    opt_b = make(model.parameters())
    for _ in range(7):
        sam_step(model, F.cross_entropy, x, y, opt_b)
    state = opt_b.state_dict()
    opt_c = make(model.parameters())
    opt_c.load_state_dict(state)
    for _ in range(6):
        sam_step(model, F.cross_entropy, x, y, opt_c)
    assert torch.equal(_flat(model), _flat(straight))


def test_variant_state_from_another_optimizer_is_refused():
    model, _, _ = _problem()
    sam_state = SAM(model.parameters(), torch.optim.SGD, lr=LR).state_dict()
    with pytest.raises(ConfigError, match="LookSAM state"):
        LookSAM(model.parameters(), torch.optim.SGD, lr=LR).load_state_dict(sam_state)


@pytest.mark.parametrize("variant", ["gsam", "wsam", "looksam", "fsam"])
def test_variants_refuse_m_sam_and_a_grad_scaler(variant):
    model, x, y = _problem(torch.float32)
    opt = _CLASSES[variant](model.parameters(), torch.optim.SGD, lr=LR)
    before = _flat(model).clone()
    with pytest.raises(ConfigError, match="m-SAM chunks"):
        sam_step(model, F.cross_entropy, x, y, opt, m=8)
    with pytest.raises(ConfigError, match="GradScaler"):
        sam_step(model, F.cross_entropy, x, y, opt, scaler=torch.amp.GradScaler("cpu"))
    assert torch.equal(_flat(model), before)


@pytest.mark.parametrize("kwargs,match", [
    (dict(cls=GSAM, alpha=-1.0), "alpha"), (dict(cls=GSAM, rho_min=0.1), "rho_min"),
    (dict(cls=WSAM, gamma=1.0), "gamma"), (dict(cls=LookSAM, k=0), "k must"),
    (dict(cls=LookSAM, alpha=float("nan")), "alpha"), (dict(cls=FriendlySAM, lmbda=1.5), "lmbda"),
    (dict(cls=FriendlySAM, sigma=-0.1), "sigma"),
])
def test_bad_variant_options_are_refused(kwargs, match):
    cls = kwargs.pop("cls")
    with pytest.raises(ConfigError, match=match):
        cls(nn.Linear(2, 2).parameters(), torch.optim.SGD, lr=LR, **kwargs)


# -- the official implementation's options --------------------------------------------------
def test_perturbation_weight_decay_sets_e_from_the_l2_regularized_gradient():
    """e = rho (g + wd w) / ||g + wd w|| (google-research/sam's loss includes the L2 term); the
    update itself is unchanged (the base optimizer adds wd w once)."""
    model, x, y = _problem()
    w0 = _flat(model).clone()
    g = _grad_fn(model, x, y)(w0)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, weight_decay=0.1, perturbation_weight_decay=True)
    F.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=False)
    d = g + 0.1 * w0
    assert (_flat(model) - (w0 + RHO * d / d.norm())).abs().max() < 1e-14
    assert torch.equal(torch.cat([w.grad.reshape(-1) for w in model.parameters()]), g)  # .grad left as it was
    opt.unperturb()
    plain = SAM(_problem()[0].parameters(), torch.optim.SGD, rho=RHO, lr=LR, weight_decay=0.1)
    assert plain.param_groups[0]["perturbation_weight_decay"] is False


class _DropoutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(6, 16), nn.Dropout(0.5), nn.Linear(16, 3)
        self.masks: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x)) + 1.0  # strictly positive, so zeros mark dropped units
        h = self.drop(h)
        self.masks.append(h == 0)
        return self.fc2(h)


@pytest.mark.parametrize("same", [True, False])
def test_same_dropout_mask_replays_the_first_pass_masks(same):
    torch.manual_seed(1)
    model = _DropoutNet().double().train()
    x, y = torch.randn(64, 6, dtype=torch.float64), torch.randint(0, 3, (64,))
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    torch.manual_seed(5)
    sam_step(model, F.cross_entropy, x, y, opt, same_dropout_mask=same)
    first, second = model.masks
    assert torch.equal(first, second) is same
    # the generator continues from where the pass at w left it: the next draw is the same either way
    after = torch.rand(3)
    torch.manual_seed(5)
    model(x)
    assert torch.equal(torch.rand(3), after) is same


# -- pytorch-optimizer 4.1, step by step ---------------------------------------------------------
def _peer_run(variant: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """STEPS steps of pytorch-optimizer's class with the same options and schedule as :func:`_ours`."""
    po = pytest.importorskip("pytorch_optimizer")
    sgd = dict(lr=LR, momentum=MOMENTUM, weight_decay=WD)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    if variant == "gsam":
        from pytorch_optimizer.lr_scheduler.proportion import ProportionScheduler
        base = torch.optim.SGD(model.parameters(), **sgd)
        rho_sched = ProportionScheduler(SimpleNamespace(optimizer=base), max_lr=LR, min_lr=0.0, max_value=RHO,
                                        min_value=0.0)
        opt = po.GSAM(model.parameters(), base, model, rho_sched, alpha=0.4)
        opt.set_closure(F.cross_entropy, x, y)  # its step() runs under no_grad; set_closure enables grad
    elif variant == "wsam":
        opt = po.WSAM(model, model.parameters(), torch.optim.SGD, rho=RHO, gamma=0.9, decouple=True, **sgd)
    elif variant == "looksam":
        opt = po.LookSAM(model.parameters(), torch.optim.SGD, rho=RHO, k=5, alpha=0.7, **sgd)
    else:
        opt = po.FriendlySAM(model.parameters(), torch.optim.SGD, rho=RHO, sigma=1.0, lmbda=0.9, **sgd)
    for t in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = _lr(t)
        if variant == "gsam":
            opt.update_rho_t()
            opt.step()
        elif variant == "wsam":
            opt.step(closure)
        else:  # their documented loop: gradients at w first, then step(closure)
            closure()
            opt.step(closure)


def peer_difference(variant: str, dtype: torch.dtype, one_tensor: bool = False) -> float:
    """Max |w_ours - w_peer| after STEPS steps from the same start."""
    ours, x, y = _problem(dtype, one_tensor)
    peer = _problem(dtype, one_tensor)[0]
    _ours(variant, ours, x, y)
    _peer_run(variant, peer, x, y)
    return float((_flat(ours) - _flat(peer)).abs().max())


# Bounds. float64: pytorch-optimizer computes the global gradient norm that scales e in float32
# (utils/gradient.py get_global_gradient_norm casts the norms with .float()), a relative error up
# to 6e-8 in e (3e-9 absolute at rho = 0.05) that moves the weights by 0.6-2e-9 over 20 steps
# (measured); its eps (1e-12 added to ||g||) is below that. LookSAM adds 1e-8 to ||g_v|| in the
# reused steps: 5.8e-7 measured. float32: rounding (6e-8 per operation) over 20 steps, 6e-8 to
# 1.3e-6 measured. Each bound is about 5x the measured difference.
_F64_BOUND = {"gsam": 1e-8, "wsam": 1e-8, "looksam": 3e-6, "fsam": 1e-8}
_F32_BOUND = {"gsam": 5e-7, "wsam": 5e-7, "looksam": 1e-5, "fsam": 5e-7}


@pytest.mark.parametrize("variant", ["gsam", "wsam", "looksam", "fsam"])
def test_variant_matches_pytorch_optimizer_step_by_step(variant):
    one = variant == "looksam"  # pytorch-optimizer's LookSAM works per tensor (see below)
    assert peer_difference(variant, torch.float64, one) < _F64_BOUND[variant]
    assert peer_difference(variant, torch.float32, one) < _F32_BOUND[variant]


def test_pytorch_optimizer_looksam_is_per_tensor_not_global():
    """On a 4-tensor MLP the per-tensor decomposition of pytorch-optimizer departs from the
    paper's global one by far more than rounding."""
    assert peer_difference("looksam", torch.float64, one_tensor=False) > 1e-4


def equivalence_table() -> list[tuple[str, str, float, float]]:
    rows = []
    for variant in ("gsam", "wsam", "looksam", "fsam"):
        one = variant == "looksam"
        rows.append((variant, "pytorch-optimizer 4.1" + (" (one-tensor model)" if one else ""),
                     peer_difference(variant, torch.float32, one), peer_difference(variant, torch.float64, one)))
        model, x, y = _problem()
        expected = _reference(variant, model, x, y)
        _ours(variant, model, x, y)
        rows.append((variant, "reference from the paper (float64)", math.nan,
                     float((_flat(model) - expected).abs().max())))
    return rows


if __name__ == "__main__":
    print("| variant | reference | max weight difference after 20 steps, float32 | float64 |")
    print("|---|---|---|---|")
    for variant, ref, f32, f64 in equivalence_table():
        print(f"| {variant} | {ref} | {'-' if math.isnan(f32) else f'{f32:.1e}'} | {f64:.1e} |")
    print(f"| looksam | pytorch-optimizer 4.1 on the 4-tensor MLP (per-tensor vs global) | "
          f"{peer_difference('looksam', torch.float32):.1e} | {peer_difference('looksam', torch.float64):.1e} |")


# -- the trainer and the CLI ---------------------------------------------------------------------
from sharpscope.checkpoint import read_checkpoint  # noqa: E402
from _callbacks import StopAt
from sharpscope.train import TrainConfig, train  # noqa: E402

_SMALL = dict(model="cnn", model_kwargs={"channels": [8, 8], "hidden": 16, "bn": True, "dropout": 0.2},
              n_train=300, epochs=2, batch_size=64, lr=0.05, seed=1)



@pytest.mark.parametrize("variant", ["looksam", "fsam"])
def test_trainer_resumes_a_variant_bit_for_bit(tmp_path, variant):
    """Stopped at step 7 (mid-cycle for LookSAM, k = 5) and resumed from the checkpoint: the
    same weights as an uninterrupted run (its counter, g_v or moving average are checkpointed)."""
    cfg = dict(_SMALL, optimizer=variant)
    train(TrainConfig(**cfg), tmp_path / "full")
    assert train(TrainConfig(**cfg), tmp_path / "part", callbacks=[StopAt(7)]).interrupted
    train(None, tmp_path / "part", resume=True)
    full = read_checkpoint(tmp_path / "full" / "checkpoint.pt")["model_state"]
    part = read_checkpoint(tmp_path / "part" / "checkpoint.pt")["model_state"]
    assert all(torch.equal(full[k], part[k]) for k in full)


def test_trainer_runs_every_variant_with_the_official_options(tmp_path):
    for variant, opts in (("gsam", {"alpha": 0.2}), ("wsam", {"gamma": 0.8}), ("looksam", {"k": 2}),
                          ("fsam", {"lmbda": 0.6})):
        cfg = TrainConfig(**dict(_SMALL, epochs=1), optimizer=variant, optimizer_options=opts, label_smoothing=0.1,
                          same_dropout_mask=True, perturbation_weight_decay=True)
        record = train(cfg, tmp_path / variant).metrics[-1]
        assert math.isfinite(record["train_loss"]) and math.isfinite(record["perturbed_loss"])


def test_looksam_perturbed_loss_averages_only_its_full_steps(tmp_path):
    """LookSAM's one-pass steps have no perturbed loss; the epoch's mean is over the full steps
    (300 examples in batches of 64: steps 0 and 5 are full, 64 examples each)."""
    cfg = TrainConfig(**dict(_SMALL, epochs=1), optimizer="looksam")
    record = train(cfg, tmp_path / "run").metrics[-1]
    assert record["perturbed_loss"] > 0.5 * record["train_loss"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(optimizer="gsam", optimizer_options={"k": 3}), "has no option 'k'; its options: alpha, rho_min"),
    (dict(optimizer="sam", optimizer_options={"alpha": 1}), "has no option 'alpha'"),
    (dict(optimizer="looksam", optimizer_options={"k": 2.5}), "k must be an integer"),
    (dict(optimizer="wsam", optimizer_options={"gamma": "x"}), "gamma"),
    (dict(optimizer="gsam", p=math.inf), "p = 2"),
    (dict(optimizer="fsam", m=8), "m-SAM"),
    (dict(optimizer="looksam", amp="fp16"), "bf16"),
    (dict(optimizer="sam", label_smoothing=1.0), "label smoothing"),
    (dict(optimizer="sam", m=8, same_dropout_mask=True), "same-dropout-mask"),
])
def test_bad_variant_configs_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)


def test_cli_trains_a_variant_with_options(cli, tmp_path):
    code, out, err = cli(["train", "--optimizer", "gsam", "--optimizer-opt", "alpha=0.2", "--epochs", "1",
                          "--n-train", "200", "--no-progress", "--label-smoothing", "0.1", "--out", str(tmp_path / "r")])
    assert code in (0, None), err
    raw = read_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert raw["config"]["optimizer_options"] == {"alpha": 0.2} and raw["config"]["label_smoothing"] == 0.1
    code, _, err = cli(["train", "--optimizer", "looksam", "--optimizer-opt", "gamma=0.9", "--out", str(tmp_path / "x")])
    assert code == 2 and "has no option 'gamma'" in err and "Traceback" not in err


def test_pytorch_optimizer_looksam_loop_takes_two_passes_on_every_step():
    """Its documented loop (closure() at w, then step(closure)) recomputes the gradient at w on
    the steps between full ones: 2 passes per step, 20 over 10 steps, where ours takes 12."""
    po = pytest.importorskip("pytorch_optimizer")
    model, x, y = _problem()
    calls = _count_forwards(model)
    opt = po.LookSAM(model.parameters(), torch.optim.SGD, rho=RHO, k=5, lr=LR)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(10):
        closure()
        opt.step(closure)
    assert calls[0] == 20


def test_every_variant_repr_names_its_class_and_options():
    """One __repr__ (SAM's) for the family: the class, the base, rho, the variant's options, lr
    (ASAM was shown as SAM before)."""
    from sharpscope.optim import registry

    model = torch.nn.Linear(3, 2)
    expected = {"sam": "p=2.0, adaptive=False", "asam": "p=2.0, adaptive=True", "rsam": "p=2.0",
                "gsam": "rho_min=0.0, alpha=0.4", "wsam": "gamma=0.9, decouple=True", "looksam": "k=5, alpha=0.7",
                "fsam": "sigma=1.0, lambda=0.9"}
    for spec in registry.specs():
        if spec.name in expected:
            opt = spec.cls(model.parameters(), torch.optim.SGD, lr=0.1, rho=0.1)
            assert repr(opt) == f"{spec.cls.__name__}(base=SGD, rho=0.1, {expected[spec.name]}, lr=0.1)"


def test_sam_radius_is_exact_for_a_parameter_of_millions_of_entries():
    """||e||_2 = rho for a 2^21-entry parameter (sharpscope.reductions: float64 block sums);
    torch's whole float32 norm of such a gradient errs ~2e-5, which a test at 1e-6 would see."""
    from sharpscope.optim import SAM

    w = torch.nn.Parameter(torch.zeros(2**21))
    w.grad = torch.full((2**21,), 0.1) + torch.rand(2**21, generator=torch.Generator().manual_seed(0)) * 1e-3
    opt = SAM([w], torch.optim.SGD, rho=0.05, lr=0.1)
    opt.first_step()
    assert abs(float(w.detach().double().norm()) / 0.05 - 1) < 1e-6
    opt.unperturb()
    assert not w.detach().any()
