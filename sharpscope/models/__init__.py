"""Model zoo and model specs: plain JSON dicts that rebuild a model from a checkpoint.

* built-in: ``{"name": "cnn", "kwargs": {"bn": True}, "input_shape": [1, 8, 8], "num_classes": 10}``;
* custom factory: ``{"factory": "package.module:function", "kwargs": {"width": 32}}``, where
  ``function(**kwargs)`` returns an ``nn.Module``. A spec may come from a checkpoint made
  elsewhere, so :func:`build_model` imports a factory only when the caller allows it:
  ``allow_factory="package.module:function"`` (the one the user named, e.g. ``--model``) or
  ``allow_factory=True`` (any: ``--trust-factory``); the current folder is on the path, as
  for ``python -m``.

Built-in architectures (input ``(C, H, W)``; ``mlp`` also ``(D,)``, ``cnn1d`` only ``(L,)``,
``gpt`` / ``bert`` token sequences ``(T,)``): ``mlp``; ``cnn1d``, the MNIST-1D paper's convnet
(Greydanus & Kobak; 5,210 parameters on 40 features, 10 classes); ``cnn``, a small VGG-style net
(85,066 parameters on 8x8 digits); ``resnet``, He et al., CVPR 2016, Sec. 4.2 (depth 6n+2, option
B shortcuts); ``wrn``, Zagoruyko & Komodakis, BMVC 2016 (depth 6n+4); ``gpt`` and ``bert``, Hugging
Face models built from a config (:mod:`.hf`, the ``transformers`` extra). Aliases fix options:
``resnet20`` is ``resnet`` with ``depth=20``, ``wrn28-10`` is ``wrn`` with ``depth=28,
widen_factor=10`` (any ``resnet<depth>`` / ``wrn<depth>-<k>`` parses).
"""

from .cnn import Conv1dNet, SimpleCNN
from .factory import check_factory_allowed, factory_name, import_callable, is_factory, make_factory_spec, parse_factory
from .mlp import MLP
from .hf import TransformersNotInstalled
from .registry import MODEL_NAMES, TOKEN_MODEL_NAMES, build_model, count_parameters, make_model_spec, parse_model_name
from .resnet import BasicBlock, CifarResNet
from .wrn import WideBasicBlock, WideResNet

__all__ = ["MODEL_NAMES", "TOKEN_MODEL_NAMES", "TransformersNotInstalled", "MLP", "SimpleCNN", "Conv1dNet",
           "BasicBlock", "CifarResNet", "WideBasicBlock", "WideResNet", "build_model", "check_factory_allowed",
           "count_parameters", "factory_name", "is_factory", "make_factory_spec", "make_model_spec",
           "parse_model_name", "parse_factory", "import_callable"]
