"""The from-scratch CNN of the study, registered with timm as `animals_cnn5`.

Registered so the one timm code path (create, save, `local-dir:` / `hf-hub:` load, features_only, TorchScript, fx)
serves the scratch network exactly as it serves ResNet or MobileNet; `tests/test_models.py` runs timm's own model
checks on it.
"""

from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import nn

from .catalogue import PROJECT_LICENSE

__all__ = ['AnimalsCNN', 'animals_cnn5', 'MAX_POOLS']

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
    `get_classifier()`, `reset_classifier()`, `forward_features()`, `forward_head()`, `forward_intermediates()`,
    `feature_info`.
    """

    # TorchScript compiles every property; `model_args` returns a plain dict, which it cannot type, and is never
    # needed inside a scripted forward pass.
    __jit_unused_properties__ = ['model_args']

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

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        dd = dict(device=self.fc.weight.device, dtype=self.fc.weight.dtype) if hasattr(self.fc, 'weight') else {}
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """(final features, [output of each selected conv block]): timm's interface for features_only='getter'.

        indices: the last n blocks if an int, all if None, else the listed block indices. `norm` has no effect
        (there is no final norm layer).
        """
        assert output_fmt in ('NCHW',), 'Output shape must be NCHW.'
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        if torch.jit.is_scripting() or not stop_early:  # cannot slice a Sequential in TorchScript
            stages = self.stages
        else:
            stages = self.stages[:max_index + 1]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the last wanted intermediate (and the head), as timm's features wrappers expect."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

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
        'pool_size': (8, 8), 'crop_pct': 1.0, 'crop_mode': 'squash', 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stages.0.conv', 'classifier': 'fc', 'license': PROJECT_LICENSE,
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
