"""Token data with nothing downloaded (issue 25 item 3): ``--data text`` (the standard library's
pydoc help text as byte tokens) and ``--data tokens`` (nanoGPT's train.bin / val.bin), blocks of
``--block-size`` tokens with their next tokens as labels; training a tiny GPT on them with the
token-mean loss (test loss, perplexity and accuracy per token, checked against an explicit
computation), resume, and the analysis verbs on the checkpoint (the Hessian of a block against
an explicit float64 Hessian)."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sharpscope.checkpoint import load_checkpoint
from sharpscope.data import DataSpec, load_dataset, loss_for_labels, text_tokens
from sharpscope.errors import ConfigError, DataError
from sharpscope.tokens import TokenCrossEntropy
from sharpscope.train import TrainConfig, train

T = 16
GPT = {"n_layer": 1, "n_embd": 16, "n_head": 2}
needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason='needs pip install "sharpscope[transformers]"')


def test_text_is_blocks_of_the_corpus_and_their_next_tokens():
    data = load_dataset(DataSpec(name="text", block_size=T))
    train_tokens, val_tokens = text_tokens("train"), text_tokens("val")
    n = (len(train_tokens) - 1) // T
    assert data.x_train.shape == data.y_train.shape == (n, T) and data.x_train.dtype == torch.int64
    assert data.x_test.shape == ((len(val_tokens) - 1) // T, T)
    assert data.num_classes == 256 and data.is_tokens and data.input_shape == (T,)
    for i in (0, 1, n - 1):
        assert torch.equal(data.x_train[i], train_tokens[i * T:(i + 1) * T])
        assert torch.equal(data.y_train[i], train_tokens[i * T + 1:(i + 1) * T + 1])
    assert torch.equal(data.x_test[3], val_tokens[3 * T:4 * T])
    assert isinstance(data.loss_fn, TokenCrossEntropy) and not data.loss_fn.shift
    subset = load_dataset(DataSpec(name="text", block_size=T, n_train=5, seed=4))
    rows = [int(((data.x_train == x).all(1)).nonzero()[0]) for x in subset.x_train]
    assert len(set(rows)) == 5 and all(torch.equal(data.y_train[r], y) for r, y in zip(rows, subset.y_train))
    fp = data.fingerprint()
    assert fp["n_examples"] == n and fp["input_shape"] == [T] and sum(fp["class_counts"]) == n * T


def test_nanogpt_bins_are_read_as_memory_maps_with_their_vocabulary(tmp_path):
    train_ids = np.arange(100, dtype=np.uint16) * 7 % 300
    val_ids = np.arange(40, dtype=np.uint16) * 11 % 290
    val_ids[5] = 300  # the largest id: vocabulary 301
    train_ids.tofile(tmp_path / "train.bin")
    val_ids.tofile(tmp_path / "val.bin")
    data = load_dataset(DataSpec(name="tokens", root=str(tmp_path), block_size=8))
    assert data.num_classes == 301 and data.x_train.shape == (99 // 8, 8) and data.x_test.shape == (39 // 8, 8)
    assert data.x_train[2].tolist() == train_ids[16:24].tolist()
    assert data.y_train[2].tolist() == train_ids[17:25].tolist()
    with pytest.raises(DataError, match="val.bin not found"):
        (tmp_path / "val.bin").unlink()
        load_dataset(DataSpec(name="tokens", root=str(tmp_path)))
    with pytest.raises(DataError, match="no root given"):
        DataSpec(name="tokens").validate()


def test_token_data_refuses_what_has_no_meaning_for_it():
    with pytest.raises(ConfigError, match="next tokens, not labels"):
        TrainConfig(data="text", label_noise=0.1)
    with pytest.raises(ConfigError, match="label-smoothing"):
        TrainConfig(data="text", label_smoothing=0.1)
    with pytest.raises(ConfigError, match="--block-size must be >= 1"):
        TrainConfig(data="text", block_size=0)
    assert loss_for_labels(torch.zeros(3, dtype=torch.long)) is F.cross_entropy


def _config(**extra) -> TrainConfig:
    options = dict(data="text", model="gpt", model_kwargs=dict(GPT), block_size=T, n_train=16, batch_size=8,
                   epochs=1, lr=0.05, keep_snapshots=False, schedule="constant")
    return TrainConfig(**{**options, **extra})


def _explicit_test_metrics(model: torch.nn.Module, data) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over every test token, in float64, by hand."""
    with torch.no_grad():
        logits = torch.cat([model(x).logits for x in data.x_test.split(256)]).double()
    flat, labels = logits.reshape(-1, logits.shape[-1]), data.y_test.reshape(-1)
    nll = -flat.log_softmax(-1).gather(1, labels[:, None]).squeeze(1)
    return float(nll.mean()), float((flat.argmax(-1) == labels).double().mean())


@needs_transformers
def test_a_tiny_gpt_trains_on_text_and_reports_loss_and_perplexity_per_token(tmp_path):
    result = train(_config(), tmp_path / "run")
    record = result.final
    ckpt = load_checkpoint(result.checkpoint)
    data = load_dataset(DataSpec.from_dict(ckpt.data_spec))
    loss, acc = _explicit_test_metrics(ckpt.model, data)
    assert record["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert record["test_acc"] == pytest.approx(acc, abs=1e-12)
    assert record["test_ppl"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert record["train_loss"] < math.log(256) + 0.5 and 0 <= record["train_acc"] <= 1
    assert ckpt.data_spec["block_size"] == T and ckpt.data_fingerprint["input_shape"] == [T]
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["test_ppl"] == record["test_ppl"]


@needs_transformers
def test_a_resumed_text_run_equals_the_run_that_never_stopped(tmp_path):
    straight = train(_config(epochs=2), tmp_path / "straight")
    train(_config(epochs=1), tmp_path / "resumed")
    resumed = train(_config(epochs=2), tmp_path / "resumed", resume=True)
    a, b = load_checkpoint(straight.checkpoint).model, load_checkpoint(resumed.checkpoint).model
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert straight.final["test_loss"] == resumed.final["test_loss"]


@needs_transformers
def test_sam_over_adamw_with_accumulation_trains_on_text(tmp_path):
    result = train(_config(optimizer="sam", base_optimizer="adamw", lr=1e-3, grad_accum=2), tmp_path / "run")
    assert math.isfinite(result.final["test_loss"]) and "perturbed_loss" in result.final


@needs_transformers
def test_the_cli_trains_on_text_and_the_analysis_verbs_read_its_checkpoint(cli, tmp_path):
    run = tmp_path / "run"
    opts = [x for k, v in GPT.items() for x in ("--model-opt", f"{k}={v}")]
    code, out, err = cli(["train", "--data", "text", "--model", "gpt", *opts, "--block-size", str(T),
                          "--n-train", "16", "--batch-size", "8", "--epochs", "1", "--no-snapshots", "--no-progress",
                          "--out", str(run)])
    assert code in (0, None), err
    assert "per token, perplexity" in out
    ckpt = str(run / "checkpoint.pt")
    code, out, err = cli(["hessian", ckpt, "--top-k", "1", "--samples", "4", "--params", "transformer.ln_f.*",
                          "--tol", "1e-6", "--json", str(tmp_path / "h.json"), "--no-progress"])
    assert code in (0, None), err
    top = json.loads((tmp_path / "h.json").read_text())["eigenvalues"]["eigenvalues"][0]
    # the explicit Hessian of the final layer norm, float64, over the same 4 blocks
    model = load_checkpoint(ckpt).model.double()
    (x, y), = load_dataset(DataSpec.from_dict(load_checkpoint(ckpt).data_spec)).batches("train", 4, 256, 0)
    names = ["transformer.ln_f.weight", "transformer.ln_f.bias"]
    fixed = {n: p.detach() for n, p in model.named_parameters()}

    def loss(w: torch.Tensor) -> torch.Tensor:
        parts = dict(zip(names, w.split(16)))
        logits = torch.func.functional_call(model, {**fixed, **parts}, (x,)).logits
        return F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))

    w0 = torch.cat([fixed[n] for n in names])
    exact = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, w0))[-1]
    assert top == pytest.approx(float(exact), rel=1e-4)
    for verb in (["gradcos", ckpt, "--samples", "4"], ["sharpness", ckpt, "--samples", "8", "--m", "4", "--rho",
                                                      "0.05"], ["info", ckpt],
                 ["surface", ckpt, "--samples", "4", "--dim", "1", "--grid", "-1:1:3", "--out", str(tmp_path / "s")]):
        code, out, err = cli(verb)
        assert code in (0, None), (verb, err)


@needs_transformers
def test_an_image_model_on_text_is_one_line_and_exit_2(cli, tmp_path):
    code, out, err = cli(["train", "--data", "text", "--model", "mlp", "--n-train", "8", "--epochs", "1",
                          "--out", str(tmp_path / "run")])
    assert code == 2 and "language model" in err and "Traceback" not in err


@needs_transformers
def test_nanogpt_tokens_train_from_the_cli_with_tracking_and_sam_over_adamw(cli, tmp_path):
    """--data tokens end to end; tracking measures with the token loss, and reports no SGD edge
    of stability for SAM over AdamW (that edge, (2 + 2 beta) / lr, is heavy-ball SGD's)."""
    rng = np.random.default_rng(0)
    rng.integers(0, 50, 600).astype(np.uint16).tofile(tmp_path / "train.bin")
    rng.integers(0, 50, 200).astype(np.uint16).tofile(tmp_path / "val.bin")
    opts = [x for k, v in GPT.items() for x in ("--model-opt", f"{k}={v}")]
    code, out, err = cli(["train", "--data", "tokens", "--data-root", str(tmp_path), "--model", "gpt", *opts,
                          "--block-size", "8", "--batch-size", "8", "--epochs", "1", "--optimizer", "sam",
                          "--base-optimizer", "adamw", "--lr", "1e-3", "--track", "lambda_max,m_sharpness",
                          "--track-samples", "16", "--no-snapshots", "--no-progress", "--out", str(tmp_path / "run")])
    assert code in (0, None), err
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["lambda_max"] > 0 and "m_sharpness" in record and "edge_of_stability" not in record
    assert record["test_ppl"] == pytest.approx(math.exp(record["test_loss"]))
    spec = load_checkpoint(tmp_path / "run" / "checkpoint.pt").model_spec
    assert spec["num_classes"] == 50 and spec["input_shape"] == [8]


def ranks_train(out: str, config: dict) -> None:
    """One training run on this rank (module level: the spawned ranks import it by name)."""
    train(TrainConfig(**config), out)


@needs_transformers
@pytest.mark.slow
def test_two_ranks_on_text_equal_one_process_global_batch_sam(tmp_path):
    """Two gloo ranks training a GPT on text (DDP around the logits), one perturbation from the
    all-reduced gradient: the one-process SAM run, to float32 rounding."""
    import torch.distributed as dist
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    from _ranks import run_on_ranks
    config = _config(epochs=1, sync_perturbation=True).to_dict()
    run_on_ranks(tmp_path, ranks_train, str(tmp_path / "ddp"), config)
    train(TrainConfig(**config), tmp_path / "one")
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["model_state"] for d in ("ddp", "one"))
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) < 1e-5


@needs_transformers
@pytest.mark.slow
def test_compare_on_text_scores_every_analysis_with_the_token_mean(cli, tmp_path):
    """``compare --data text --model gpt`` end to end (issue 25, item 3): the analyses, surfaces
    and interpolation score with the token-mean loss; lambda_max of a run equals the top
    eigenvalue of the same analysis subset under TokenCrossEntropy, computed here directly."""
    from sharpscope import hessian
    from sharpscope.experiments.analyses import PROFILES

    out = tmp_path / "c"
    opts = [x for k, v in GPT.items() for x in ("--model-opt", f"{k}={v}")]
    code, _, err = cli(["compare", "--data", "text", "--model", "gpt", *opts, "--block-size", str(T), "--profile",
                        "quick", "--seeds", "2", "--epochs", "1", "--n-train", "32", "--out", str(out), "--no-progress"])
    assert code in (0, None), err
    results = json.loads((out / "results.json").read_text())
    seed0 = results["optimizers"]["sam"]["seeds"]["0"]
    assert 0 <= seed0["final"]["test_acc"] <= 1 and math.isfinite(seed0["final"]["test_ppl"])
    assert "interpolation" in results and math.isfinite(results["optimizers"]["sgd"]["surface"]["centre_loss"])
    s = PROFILES["quick"]
    ckpt = load_checkpoint(out / "sam" / "seed0" / "checkpoint.pt")
    data = load_dataset(DataSpec.from_dict(ckpt.data_spec))
    batches = data.batches("train", min(s.samples, data.x_train.shape[0]), 4096, 0)
    direct = hessian.eigenvalues(ckpt.model, TokenCrossEntropy(shift=False), batches, k=s.top_k, tol=s.eig_tol, seed=0)
    assert seed0["lambda_max"] == pytest.approx(direct.eigenvalues[0], rel=1e-6)
