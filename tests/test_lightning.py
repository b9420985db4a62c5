"""examples/lightning_sam.py: SAM and m-SAM in a LightningModule (runs when the ``lightning``
extra is installed, skipped otherwise)."""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning")
pytestmark = [pytest.mark.filterwarnings("ignore:You defined a `validation_step`"),
              pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated")]

from sharpscope import SAM, sam_step  # noqa: E402
from sharpscope.data import load_dataset  # noqa: E402
from sharpscope.models import build_model, make_model_spec  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lightning_sam.py"


def _example():
    spec = importlib.util.spec_from_file_location("lightning_sam", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("m", [None, 16])
def test_lightning_module_takes_exactly_sams_steps(m, tmp_path):
    """Two epochs through ``Trainer.fit`` give the weights and BatchNorm statistics of the same
    SAM (m-SAM) steps taken with ``sam_step`` on the same batches, bit for bit."""
    example = _example()
    data = load_dataset("digits")
    x, y = data.x_train[:320], data.y_train[:320]
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=False)
    torch.manual_seed(0)
    model = build_model(make_model_spec("cnn", data.input_shape, data.num_classes, channels=[8, 8], hidden=16,
                                        bn=True))
    reference = copy.deepcopy(model)
    module = example.SAMModule(model, rho=0.05, lr=0.05, m=m, epochs=2)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, loader)

    sam = SAM(reference.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(sam, 2)
    reference.train()
    for _ in range(2):
        for xb, yb in loader:
            sam_step(reference, F.cross_entropy, xb, yb, sam, m=m)
        schedule.step()
    ours, theirs = model.state_dict(), reference.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not torch.equal(ours["features.1.running_mean"], torch.zeros_like(ours["features.1.running_mean"]))


def test_lightning_example_trains_digits(tmp_path):
    import subprocess
    import sys
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--out", str(out), "--epochs", "4"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    acc = float(re.search(r"final test accuracy ([0-9.]+)", proc.stdout).group(1))
    assert acc > 0.9, proc.stdout
    assert (out / "model.pt").is_file()
