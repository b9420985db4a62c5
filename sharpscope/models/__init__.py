"""Model zoo and model specs: plain JSON dicts that rebuild a model, either built-in
(``{"name": "cnn", "kwargs": {"bn": True}, "input_shape": [1, 8, 8], "num_classes": 10}``; :mod:`.registry`)
or a custom factory (``{"factory": "package.module:function", "kwargs": {...}}``, returning an
``nn.Module``; run only when allowed, :mod:`.factory`). Built-in: ``mlp``, ``cnn1d`` (MNIST-1D's
convnet), ``cnn`` (VGG-style), ``resnet`` (He et al. 2016, depth 6n+2), ``wrn`` (Zagoruyko &
Komodakis 2016, depth 6n+4), and the Hugging Face ``gpt`` / ``bert`` / ``vit`` (:mod:`.hf`); aliases such as
``resnet20`` or ``wrn28-10`` fix options.
"""

from .cnn import Conv1dNet, SimpleCNN
from .factory import check_factory_allowed, factory_name, import_callable, is_factory, make_factory_spec, parse_factory
from .mlp import MLP
from .hf import TransformersNotInstalled
from .registry import MODEL_NAMES, build_model, count_parameters, make_model_spec, parse_model_name
from .resnet import BasicBlock, CifarResNet
from .wrn import WideBasicBlock, WideResNet

__all__ = ["MODEL_NAMES", "TransformersNotInstalled", "MLP", "SimpleCNN", "Conv1dNet",
           "BasicBlock", "CifarResNet", "WideBasicBlock", "WideResNet", "build_model", "check_factory_allowed",
           "count_parameters", "factory_name", "is_factory", "make_factory_spec", "make_model_spec",
           "parse_model_name", "parse_factory", "import_callable"]
