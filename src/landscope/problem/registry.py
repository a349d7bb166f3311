"""The built-in models and datasets by name: where each factory lives, as 'package.module:function'.

This table is the one home of the built-in names. Validating a config checks names and options here
without importing torch (the options come from the factories' source text, see
:func:`landscope.factories.factory_text`), so planning the DAG stays light; ``models.build_model`` and
``data.load_dataset`` import the factory named here when a job builds the problem.
"""

from __future__ import annotations

from typing import NamedTuple

from landscope.factories import FactoryText, check_component, factory_text

MODELS_MODULE = "landscope.problem.models"
DATA_MODULE = "landscope.problem.data"


class Builtin(NamedTuple):
    """A built-in component: the factory called to build it, and the callable whose signature lists
    its options when the factory only forwards ``**kw`` (resnet18 and resnet34 build a ResNet)."""

    factory: str
    options_from: str | None = None

    def text(self) -> FactoryText:
        """Options (with defaults) and docstring of the built-in, read without importing it."""
        return factory_text(self.options_from or self.factory)


MODELS: dict[str, Builtin] = {
    "analytic": Builtin("landscope.problem.analytic:AnalyticExample"),
    "halfspace_logistic": Builtin(f"{MODELS_MODULE}:HalfSpace"),
    "mlp": Builtin(f"{MODELS_MODULE}:MLP"),
    "logistic_regression": Builtin(f"{MODELS_MODULE}:LogisticRegression"),
    "cnn": Builtin(f"{MODELS_MODULE}:CNN"),
    "resnet9": Builtin(f"{MODELS_MODULE}:ResNet9"),
    "resnet18": Builtin(f"{MODELS_MODULE}:resnet18", f"{MODELS_MODULE}:ResNet"),
    "resnet34": Builtin(f"{MODELS_MODULE}:resnet34", f"{MODELS_MODULE}:ResNet"),
    "lstm_lm": Builtin(f"{MODELS_MODULE}:LSTMLM"),
    "transformer_lm": Builtin(f"{MODELS_MODULE}:TransformerLM"),
}
MODEL_IMPLICIT = ("in_features", "n_classes")  # every model receives these from the data, not from the config

DATASETS: dict[str, Builtin] = {
    name: Builtin(f"{DATA_MODULE}:{name}")
    for name in ("analytic", "halfspace", "digits", "fashion_mnist", "cifar10", "cifar100", "ptb", "wikitext2",
                 "shakespeare", "mnist1d")
}


def check_model_name(name: str, where: str) -> None:
    """A built-in model or an importable factory 'package.module:function'; else a ConfigError."""
    check_component(name, MODELS, "model", where)


def check_dataset_name(name: str, where: str) -> None:
    """A built-in dataset or an importable factory 'package.module:function'; else a ConfigError."""
    check_component(name, DATASETS, "dataset", where)
