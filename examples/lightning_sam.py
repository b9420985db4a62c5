"""SAM and m-SAM inside a PyTorch Lightning ``LightningModule`` (manual optimization).

    pip install -e ".[lightning]"
    python examples/lightning_sam.py --out runs/lightning            # SAM
    python examples/lightning_sam.py --out runs/lightning --m 16     # m-SAM, 16 examples per e

SAM needs two forward-backward passes per step, so the module turns Lightning's automatic
optimization off and drives SAM's two steps itself:

- plain SAM: ``manual_backward`` at w, ``first_step`` (to w + e), ``manual_backward`` at w + e
  inside :func:`sharpscope.frozen_bn_stats` (the BatchNorm policy of the official code: the
  running statistics come from the pass at w only), ``second_step`` (back to w, base update).
  ``manual_backward`` keeps Lightning's precision plugins and strategies in charge of the
  backward passes;
- m-SAM (``--m``): :func:`sharpscope.sam_step` with ``m``, which chunks the batch and applies
  the same BatchNorm policy per chunk (single device: it calls ``backward`` itself).

Any SAM variant (``sharpscope.GSAM``, ``LookSAM``, ...) plugs in the same way through
``sam_step``; the learning-rate schedule steps once per epoch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sharpscope import SAM, frozen_bn_stats, sam_step
from sharpscope.data import load_dataset
from sharpscope.models import build_model, make_model_spec


class SAMModule(L.LightningModule):
    """A classifier trained with SAM (``m`` None) or m-SAM, SGD with momentum as the base."""

    def __init__(self, model: nn.Module, rho: float = 0.05, lr: float = 0.05, m: int | None = None,
                 epochs: int = 10) -> None:
        super().__init__()
        self.model, self.rho, self.lr, self.m, self.epochs = model, rho, lr, m, epochs
        self.automatic_optimization = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def configure_optimizers(self):
        sam = SAM(self.model.parameters(), torch.optim.SGD, rho=self.rho, lr=self.lr, momentum=0.9,
                  weight_decay=5e-4)
        return {"optimizer": sam, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(sam, self.epochs)}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        sam: SAM = self.optimizers().optimizer
        if self.m is not None:
            result = sam_step(self.model, F.cross_entropy, x, y, sam, m=self.m)
            loss, perturbed = result.loss, result.perturbed_loss
        else:
            sam.zero_grad()
            loss = F.cross_entropy(self.model(x), y)
            self.manual_backward(loss)
            sam.first_step(zero_grad=True)
            with frozen_bn_stats(self.model):
                perturbed = F.cross_entropy(self.model(x), y)
                self.manual_backward(perturbed)
            sam.second_step(zero_grad=True)
        self.log_dict({"train_loss": loss.detach(), "perturbed_loss": perturbed.detach()}, on_epoch=True,
                      on_step=False)
        return loss.detach()

    def on_train_epoch_end(self) -> None:
        self.lr_schedulers().step()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.model(x)
        self.log_dict({"test_loss": F.cross_entropy(logits, y), "test_acc": (logits.argmax(1) == y).float().mean()})


def digits_loaders(batch_size: int = 64) -> tuple[DataLoader, DataLoader, tuple, int]:
    data = load_dataset("digits")
    train = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=batch_size, shuffle=False)
    test = DataLoader(TensorDataset(data.x_test, data.y_test), batch_size=512)
    return train, test, data.input_shape, data.num_classes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/lightning"))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--m", type=int, default=None, help="m-SAM: examples per perturbation")
    ap.add_argument("--rho", type=float, default=0.05)
    args = ap.parse_args()

    L.seed_everything(0, verbose=False)
    train, test, shape, classes = digits_loaders()
    model = build_model(make_model_spec("cnn", shape, classes, bn=True))
    module = SAMModule(model, rho=args.rho, m=args.m, epochs=args.epochs)
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=args.out)
    trainer.fit(module, train)
    metrics = trainer.validate(module, test, verbose=False)[0]
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "model.pt")
    print(f"final test accuracy {metrics['test_acc']:.4f} (test loss {metrics['test_loss']:.4f})")


if __name__ == "__main__":
    main()
