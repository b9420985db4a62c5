"""Model zoo and model specs.

A *model spec* is a plain, JSON-serialisable dict that describes how to build a model, so
it can be stored in checkpoints and rebuilt later:

* built-in::

    {"name": "cnn", "kwargs": {"bn": True}, "input_shape": [1, 8, 8], "num_classes": 10}

* custom factory::

    {"factory": "package.module:function", "kwargs": {"width": 32}}

  ``function(**kwargs)`` must return a :class:`torch.nn.Module`.  Building a factory spec
  imports and runs code named by the spec, and a spec may come from a checkpoint or run
  folder made elsewhere, so :func:`build_model` does it only when the caller allows it:
  ``allow_factory="package.module:function"`` (that factory only: the one the user named,
  e.g. ``--model`` on the command line) or ``allow_factory=True`` (any factory: the CLI's
  ``--trust-factory``). The module is imported as ``python -m`` would: the current folder
  is on the path.

Built-in architectures (every one but ``cnn1d`` accepts ``input_shape`` ``(C, H, W)``; ``mlp``
also ``(D,)``, ``cnn1d`` only ``(L,)``):

* ``mlp`` -- multi-layer perceptron.
* ``cnn1d`` -- the small 1-D convnet of the MNIST-1D paper (Greydanus & Kobak); on 40 features
  and 10 classes it has 5,210 parameters.
* ``cnn`` -- small VGG-style convolutional net; with its defaults on 8x8 one-channel digits
  and 10 classes it has exactly 85,066 parameters.
* ``resnet`` -- CIFAR ResNet of He et al., "Deep Residual Learning for Image Recognition",
  CVPR 2016, Sec. 4.2 (depth 6n+2, projection shortcuts = option B).
* ``wrn`` -- Wide ResNet of Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016
  (depth 6n+4, pre-activation blocks).

* ``gpt`` -- a GPT-2-style causal language model, ``bert`` -- a BERT-style sequence
  classifier: Hugging Face ``transformers`` models built from a config (nothing downloaded;
  input shape (T,) of tokens; the ``transformers`` extra, imported only when one is built;
  :mod:`~sharpscope.models.hf`).

Aliases fix some options: ``resnet20`` is ``resnet`` with ``depth=20`` and ``wrn28-10`` is
``wrn`` with ``depth=28, widen_factor=10`` (any ``resnet<depth>`` / ``wrn<depth>-<k>`` parses).

The package's modules: one per architecture (:mod:`~sharpscope.models.mlp`,
:mod:`~sharpscope.models.cnn`, :mod:`~sharpscope.models.resnet`, :mod:`~sharpscope.models.wrn`:
the class and its builder), :mod:`~sharpscope.models.registry` (names, specs, :func:`build_model`)
and :mod:`~sharpscope.models.factory` (custom factories and the rules for running them). Every
public name is importable from ``sharpscope.models`` itself.
"""

from .cnn import Conv1dNet, SimpleCNN
from .factory import check_factory_allowed, factory_name, import_callable, is_factory, make_factory_spec, parse_factory
from .mlp import MLP
from .hf import TransformersNotInstalled
from .registry import MODEL_NAMES, TOKEN_MODEL_NAMES, build_model, count_parameters, make_model_spec, parse_model_name
from .resnet import BasicBlock, CifarResNet
from .wrn import WideBasicBlock, WideResNet

__all__ = [
    "MODEL_NAMES",
    "TOKEN_MODEL_NAMES",
    "TransformersNotInstalled",
    "MLP",
    "SimpleCNN",
    "Conv1dNet",
    "BasicBlock",
    "CifarResNet",
    "WideBasicBlock",
    "WideResNet",
    "build_model",
    "check_factory_allowed",
    "count_parameters",
    "factory_name",
    "is_factory",
    "make_factory_spec",
    "make_model_spec",
    "parse_model_name",
]
__all__ += ["parse_factory", "import_callable"]  # also read by sharpscope.landscape.metrics
