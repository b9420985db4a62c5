"""Train a custom CNN with SAM using a hand-written loop (no sharpscope trainer).

Shows the two-step SAM update driven by hand: ``first_step`` moves the weights to the
worst-case neighbour w + e_hat(w), ``second_step`` returns to w and applies SGD with the
gradient taken there. The model has one BatchNorm layer, so the second forward pass is
wrapped in ``ss.frozen_bn_stats`` (running statistics come from the clean pass only). A
torch ``CosineAnnealingLR`` drives the SAM optimizer like any other. At the end the model
is saved with ``ss.save_checkpoint`` and rebuilt with ``ss.load_checkpoint``.

Run:  python examples/sam_training_loop.py [--epochs 15] [--out DIR]
(about 6 s on 2 idle CPU cores; without --out the checkpoint goes to a new temporary folder).
Inspect the checkpoint afterwards with:  PYTHONPATH=examples sharpscope info DIR/model.pt
"""

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import sharpscope as ss


class DigitsCNN(nn.Module):
    """A ~10k-parameter CNN for 8x8 digits with a single BatchNorm layer."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 8x8 -> 4x4
        return self.fc(x.flatten(1))


def build_model(width: int = 16) -> nn.Module:
    """The factory named in the checkpoint, so ``ss.load_checkpoint`` can rebuild the model."""
    return DigitsCNN(width)


def digits_loaders(batch_size: int = 64, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """scikit-learn's bundled digits (no download) scaled to [0, 1], seeded 80/20 split."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(digits.target, dtype=torch.long)
    n_test = len(y) // 5
    train, test = random_split(TensorDataset(x, y), [len(y) - n_test, n_test],
                               generator=torch.Generator().manual_seed(seed))
    shuffle_gen = torch.Generator().manual_seed(seed + 1)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=shuffle_gen),
            DataLoader(test, batch_size=512))


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return correct / len(loader.dataset)


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a new temp folder)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="sharpscope-sam-loop-"))
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)  # same initial weights every run
    train_loader, test_loader = digits_loaders()
    model = build_model()
    # SAM wraps the base optimizer class; lr and momentum are passed through to SGD.
    opt = ss.SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9)
    # SAM shares SGD's param_groups, so a torch scheduler changes the lr SAM uses (stepped per batch).
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * len(train_loader))

    for epoch in range(1, args.epochs + 1):
        model.train()
        total, seen = 0.0, 0
        for x, y in train_loader:
            loss = F.cross_entropy(model(x), y)       # 1) clean pass at w (updates BN running stats)
            loss.backward()
            opt.first_step(zero_grad=True)            # 2) w -> w + e_hat(w)
            with ss.frozen_bn_stats(model):           # 3) perturbed pass; BN stats restored on exit
                F.cross_entropy(model(x), y).backward()
            opt.second_step(zero_grad=True)           # 4) back to w, SGD step with grad at w + e_hat
            sched.step()
            total, seen = total + loss.item() * len(y), seen + len(y)
        acc = accuracy(model, test_loader)
        print(f"epoch {epoch:3d}  train loss {total / seen:.4f}  test accuracy {acc:.4f}  "
              f"lr {sched.get_last_lr()[0]:.4f}")

    # The factory is "<this script's module name>:build_model": importable whenever this
    # folder is on sys.path (it is when the script runs; elsewhere: PYTHONPATH=examples).
    spec = {"factory": f"{Path(__file__).stem}:build_model", "kwargs": {"width": 16}}
    path = ss.save_checkpoint(out / "model.pt", model, model_spec=spec, optimizer_state=opt.state_dict(),
                              note="examples/sam_training_loop.py", test_accuracy=acc)
    reloaded = ss.load_checkpoint(path, allow_factory=True)  # runs build_model, loads the weights
    assert accuracy(reloaded.model, test_loader) == acc
    print(f"final test accuracy {acc:.4f}")
    print(f"checkpoint written to {path} (metadata: {reloaded.metadata})")
    return acc


if __name__ == "__main__":
    main()
