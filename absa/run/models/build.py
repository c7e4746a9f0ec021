"""``build_from_config(cfg.model, info)``: the registry or an external model, for a data set."""

from __future__ import annotations

from typing import Any, Protocol

from absa.run.data.splits import DatasetInfo
from absa.run.models.checks import check_model_args, external_kind
from absa.run.models.classifier import ImageClassifier
from absa.run.models.wrap import build_external
from absa.run.models.zoo import MODELS


class ModelSection(Protocol):
    """What the builders read of the config's ``model`` section (absa.run.config.ModelConfig)."""

    name: str
    width: int
    kwargs: dict[str, Any]
    classifier: str | None


def build_model(name: str, info: DatasetInfo, width: int = 16, **kwargs: Any) -> ImageClassifier:
    """Build a model for a dataset (channels, classes, normalization from ``info``);
    ``kwargs`` are the factory's extra arguments (``model.kwargs``). ``width`` only reaches
    registry models; torchvision:/timm:/module:function names go to ``build_external``."""
    if external_kind(name) is not None:
        return build_external(name, info, kwargs)
    check_model_args(name, kwargs)
    return MODELS[name](info, width, **kwargs)


def build_from_config(cfg: ModelSection, info: DatasetInfo) -> ImageClassifier:
    """The model that ``cfg`` (the ``model`` section) describes, for dataset ``info``."""
    if external_kind(cfg.name) is not None:
        return build_external(cfg.name, info, cfg.kwargs, cfg.classifier)
    return build_model(cfg.name, info, cfg.width, **cfg.kwargs)
