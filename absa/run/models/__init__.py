"""Model registry and wrappers: ``build_from_config(cfg.model, info)`` -> ``ImageClassifier``.

Every model has the same outer shape, which the Hessian code relies on:

    model(x) == model.classifier(model.features(x))

- ``model.normalize``: per-channel (x - mean) / std as a layer, so inputs and attack epsilons
  are in [0, 1] pixel units;
- ``model.features(x)``: normalize + backbone -> penultimate features [N, D];
- ``model.classifier``: the final ``nn.Linear`` (D -> classes), the paper's last-layer block.

``model.name`` is one of:

- a registry name (``MODELS``: mlp, small_cnn, c1, c2, alexnet, resnet8/18/20, wresnet16_4),
  built for the data set's channels and classes; ``model.width`` and ``model.kwargs`` go to
  its factory (c1, c2, alexnet, resnet18 and wresnet16_4 have fixed widths: for them
  ``model.width`` is ignored, with a note, ``width_note``);
- ``torchvision:<name>``: ``torchvision.models.get_model(name, weights=None,
  num_classes=<classes>, **model.kwargs)`` for any classification model of
  ``torchvision.models.list_models()`` (resnet18, resnet50, mobilenet_v3_small, vit_b_16
  with ``kwargs: {image_size: 32}``, ...). These are the ImageNet architectures (a resnet18
  here keeps its 7x7 stride-2 stem; the registry's ``resnet18`` is the CIFAR variant);
- ``timm:<name>``: ``timm.create_model(name, pretrained=False, num_classes=<classes>,
  **model.kwargs)``; timm is optional (``pip install absa[timm]``, with ``-c
  constraints.txt`` on CPU machines) and imported only when such a model is built;
- ``some.module:function`` (or ``module:Class``, or ``module:obj.attr``): the user's own
  factory, imported with the current directory first on ``sys.path`` and called as
  ``function(num_classes=<classes of the data set>, **model.kwargs)``, the convention of
  torchvision's and timm's constructors (so any of those can be named directly); it must
  return an ``nn.Module`` that takes normalized [N, C, H, W] images and returns logits.
  **Naming a factory in a config runs that code**, at config validation (which imports the
  module to check the name and the keyword arguments) and at every build; only use configs
  whose code you trust.

torchvision, timm and user models are wrapped into the same outer shape: normalize
(``DatasetInfo.mean/std``) -> backbone -> classifier. The classification head is the module at
``model.classifier`` (a dotted path inside the factory's module, e.g. ``fc``, ``classifier.3``,
``heads.head``) or, when that is unset, found automatically: timm's ``get_classifier()``, then
an ``nn.Linear`` at ``fc``, ``classifier``, ``head`` or ``heads`` (or the last element of an
``nn.Sequential`` there, or of the module itself when it is a Sequential ending in an
``nn.Linear``). The head must be an ``nn.Linear`` with one output per class; it is moved out
of the module (replaced by ``nn.Identity``), so ``features(x)`` gives the penultimate
features. While building, one forward pass of a random [1, C, H, W] batch in eval mode checks
that the wrapped model computes what the module did (the head really was its last layer);
this costs two forward passes at build time. A head that cannot be found, or that fails the
check, is a one-line ModelError saying to name it with ``model.classifier: <path>``.

Input channels: when the data has one channel and the module's first ``nn.Conv2d`` expects
more (3 for the ImageNet architectures), the wrapper repeats the normalized channel to that
many inside ``features`` (no parameters change). A module without convolutions is fed the
data's channels as they are; any other mismatch is an error (pass the factory's own channel
argument, e.g. ``in_chans`` for timm, in ``model.kwargs``).

Weights: absa never downloads. ``model.kwargs.weights`` / ``model.kwargs.pretrained`` (for
torchvision, timm and user factories; absa takes them out before calling the factory) must be
null/false or the path of a local file, read with ``torch.load(weights_only=True)``: a
state_dict of the factory's module (or one nested under ``state_dict`` / ``model``, or a
state_dict of an absa model of the same architecture). Head entries whose shapes do not fit
the data's classes are skipped (the head stays freshly initialized); any other missing,
unexpected or mis-shaped entry is an error.

Modules: ``classifier`` (the outer shape, ``model_mode``), ``zoo`` (the registry), ``checks``
(name and kwargs validation, what config asks), ``factories`` (torchvision/timm/user
factories), ``wrap`` (wrapping external models), ``build`` (``build_from_config``).
"""

from __future__ import annotations

from absa.run.models.build import ModelSection, build_from_config, build_model
from absa.run.models.checks import (
    PREFIXES,
    WEIGHT_KEYS,
    check_model_args,
    check_model_name,
    external_kind,
    weights_file,
)
from absa.run.models.classifier import ImageClassifier, Normalize, count_params, model_mode
from absa.run.models.errors import TIMM_MISSING, ModelError
from absa.run.models.factories import TRUST_HINT, code_imports
from absa.run.models.wrap import HEAD_ATTRS, build_external
from absa.run.models.zoo import (
    FIXED_WIDTH,
    MODELS,
    BasicBlock,
    alexnet,
    c1,
    c2,
    mlp,
    resnet8,
    resnet18,
    resnet20,
    small_cnn,
    width_note,
    wresnet16_4,
)

__all__ = [
    "FIXED_WIDTH",
    "HEAD_ATTRS",
    "MODELS",
    "PREFIXES",
    "TIMM_MISSING",
    "TRUST_HINT",
    "WEIGHT_KEYS",
    "BasicBlock",
    "ImageClassifier",
    "ModelError",
    "ModelSection",
    "Normalize",
    "alexnet",
    "build_external",
    "build_from_config",
    "build_model",
    "c1",
    "c2",
    "check_model_args",
    "check_model_name",
    "code_imports",
    "count_params",
    "external_kind",
    "mlp",
    "model_mode",
    "resnet8",
    "resnet18",
    "resnet20",
    "small_cnn",
    "weights_file",
    "width_note",
    "wresnet16_4",
]
