"""Recipe measurements: what each training ingredient is worth on real images, against plain PyTorch baselines.

Why a loop of its own and not `training.train`: the README's recipe table needs the same images, split, models and
seeds run with one ingredient switched at a time (optimizer, head init, augmentation, EMA, label smoothing, Mixup,
backbone lr, TTA), plus the plain baselines the issue compares against (a 5-conv CNN with Adam and nothing else; a
linear probe on frozen features). This loop is that: a short, plain epoch loop whose every option is one of the
ingredients in `recipe` / `lr_probe`, on the project's decoded-image cache and models. Selection is on validation
only: the test accuracy reported is the one of the epoch (and raw/EMA weights) with the best validation accuracy.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from . import augment as hfaugment
from . import data as hfdata
from . import image_cache
from . import models as hfmodels
from . import recipe
from .lr_probe import lr_range_test
from .preprocess import normalize_batch

__all__ = ['Recipe', 'PlainCNN', 'load_split_arrays', 'run_recipe', 'EXPERIMENTS']


@dataclass(frozen=True)
class Recipe:
    """One configuration of the loop; `model` 'plain_cnn' is the plain PyTorch baseline network."""
    model: str = 'animals_cnn5'
    unfreeze: str = 'all'
    optimizer: str = 'adamw'  # adam (no decay), adamw, sgd (momentum 0.9, nesterov)
    lr: float | str = 1e-3  # or 'auto': lr range test
    weight_decay: float = 0.05
    backbone_lr_scale: float = 1.0
    augment: bool = False
    ema: bool = False
    label_smoothing: float = 0.0
    mixup: bool = False
    head_init: float | None = None  # None: the architecture's own init; 0.0: zero weights and bias
    drop_rate: float | None = None
    epochs: int = 5
    batch_size: int = 32


class PlainCNN(nn.Module):
    """The plain baseline: 5 x (conv3x3 -> BatchNorm -> ReLU -> max-pool 2x2), flatten, one Linear; PyTorch init."""

    def __init__(self, num_classes: int, image_size: int, widths=(32, 64, 128, 256, 256)):
        super().__init__()
        layers, prev = [], 3
        for w in widths:
            layers += [nn.Conv2d(prev, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            prev = w
        self.features = nn.Sequential(*layers)
        side = image_size // 2 ** len(widths)
        self.fc = nn.Linear(prev * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


def load_split_arrays(data_dir: str, out_dir: str, image_size: int, seed: int = 42) -> dict:
    """The project's 300/75/75 split of `data_dir` (written once into out_dir) and its decoded uint8 arrays."""
    from pathlib import Path

    manifest = Path(out_dir) / 'splits.csv'
    if not manifest.exists():
        hfdata.prepare_splits(data_dir, out_dir, train=300, val=75, test=75, seed=seed)
    rows = hfdata.read_manifest(manifest, data_dir, verify=False)
    arrays = image_cache.cached_split_arrays(data_dir, manifest, image_size, verify=False)
    return dict(arrays=arrays, class_names=hfdata.class_names(rows), image_size=image_size)


def _build(r: Recipe, num_classes: int, image_size: int) -> tuple[nn.Module, tuple, tuple]:
    """(model, mean, std); the plain CNN normalises with ImageNet statistics like the scratch CNN."""
    if r.model == 'plain_cnn':
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        model = PlainCNN(num_classes, image_size)
        model.get_classifier = lambda: model.fc
        return model, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    kwargs = {'drop_rate': r.drop_rate} if r.drop_rate is not None else {}
    model = hfmodels.create_model(r.model, num_classes=num_classes, **kwargs)
    hfmodels.apply_regime(model, r.unfreeze)
    if r.head_init is not None:
        recipe.init_new_head(model, scale=r.head_init, bias=0.0)
    cfg = hfmodels.data_config(model)
    return model, tuple(cfg['mean']), tuple(cfg['std'])


def _optimizer(r: Recipe, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    if r.model == 'plain_cnn':
        groups = [dict(params=[p for p in model.parameters()], lr=lr, weight_decay=0.0)]
    else:
        groups = hfmodels.param_groups(model, lr, backbone_lr_scale=r.backbone_lr_scale,
                                       weight_decay=r.weight_decay if r.optimizer != 'adam' else 0.0)
    if r.optimizer == 'sgd':
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    return (torch.optim.Adam if r.optimizer == 'adam' else torch.optim.AdamW)(groups, lr=lr)


@torch.no_grad()
def _accuracy(module: nn.Module, norm, pixels: torch.Tensor, labels: torch.Tensor, tta: bool = False) -> float:
    """Accuracy of `module` (eval mode) on uint8 images; `norm` normalises them (after the TTA flip)."""
    module.eval()
    net = lambda x: module(norm(x))  # noqa: E731
    hits = 0
    for i in range(0, len(pixels), 250):
        x = pixels[i:i + 250]
        scores = recipe.tta_probabilities(net, x) if tta else net(x)
        hits += (scores.argmax(1) == labels[i:i + 250]).sum().item()
    return hits / len(pixels)


def run_recipe(r: Recipe, split: dict, seed: int = 0, probe_steps: int = 150) -> dict:
    """Train `r` on the split, validate raw (and EMA) weights every epoch; test the best by validation accuracy."""
    torch.manual_seed(seed)
    x_train, y_train = split['arrays']['train']
    num_classes, size = len(split['class_names']), split['image_size']
    model, mean, std = _build(r, num_classes, size)
    norm = lambda x: normalize_batch(x, mean, std)  # noqa: E731
    augment = hfaugment.batch_augmentation(size) if r.augment else None
    mix = recipe.MixupCutmix(num_classes, label_smoothing=r.label_smoothing) if r.mixup else None
    order = torch.Generator().manual_seed(seed)

    def batches():
        perm = torch.randperm(len(x_train), generator=order)
        for i in range(0, len(perm), r.batch_size):
            yield x_train[perm[i:i + r.batch_size]], y_train[perm[i:i + r.batch_size]]

    # Head-only without augmentation: the frozen prefix is a fixed function of each image, run it once.
    parts = hfmodels.frozen_prefix_split(model) if r.model != 'plain_cnn' and augment is None else None
    if parts is not None:
        parts[0].eval()
        with torch.no_grad():
            x_train = torch.cat([parts[0](norm(x_train[i:i + 250])) for i in range(0, len(x_train), 250)])
    train_net = parts[1] if parts is not None else model

    def loss_of(batch):
        x, y = batch
        if parts is None:
            x = norm(augment(x) if augment is not None else x)
        if mix is not None:
            x, soft = mix(x, y)
            return recipe.soft_target_loss(train_net(x), soft)
        return F.cross_entropy(train_net(x).float(), y, label_smoothing=r.label_smoothing)

    probe = None
    lr = r.lr
    if lr == 'auto':
        hfmodels.set_train_mode(model)
        probe = lr_range_test(model, lambda: _optimizer(r, model, 1e-3), list(batches()), loss_of,
                              start_lr=1e-6, end_lr=1.0, steps=probe_steps)
        lr = probe.chosen_lr
    optimizer = _optimizer(r, model, float(lr))
    steps = r.epochs * math.ceil(len(x_train) / r.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    ema = recipe.make_ema(model, recipe.ema_decay_for(steps)) if r.ema else None
    x0, y0 = split['arrays']['train'][0][:256], y_train[:256]
    start_loss = recipe.initial_loss(model, norm(x0), y0)
    best = dict(val=-1.0)
    history, step, t0 = [], 0, time.perf_counter()
    for epoch in range(1, r.epochs + 1):
        hfmodels.set_train_mode(model)
        losses = []
        for batch in batches():
            loss = loss_of(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sched.step()
            step += 1
            if ema is not None:
                ema.update(model, step=step)
            losses.append(loss.item())
        row = dict(epoch=epoch, train_loss=sum(losses) / len(losses))
        for kind, module in (('raw', model), ('ema', ema.module if ema is not None else None)):
            if module is None:
                continue
            val = _accuracy(module, norm, *split['arrays']['val'])
            row[f'val_{kind}'] = val
            if val > best['val']:
                best = dict(val=val, epoch=epoch, kind=kind, state=copy.deepcopy(module.state_dict()))
        history.append(row)
    model.load_state_dict(best.pop('state'))
    x_test, y_test = split['arrays']['test']
    result = dict(
        recipe=asdict(r), seed=seed, lr_used=float(lr), start_loss=start_loss, best_epoch=best['epoch'],
        best_weights=best['kind'], best_val=best['val'], train_acc=_accuracy(model, norm, *split['arrays']['train']),
        test=_accuracy(model, norm, x_test, y_test), test_tta=_accuracy(model, norm, x_test, y_test, tta=True),
        time_s=time.perf_counter() - t0, history=history)
    if probe is not None:
        result['probe'] = probe.as_dict()
    return result


def linear_probe(split: dict, model_name: str = 'tf_efficientnet_lite0', epochs: int = 3, seed: int = 0,
                 lr: float = 1e-3) -> dict:
    """The plain baseline for head-only fine-tuning: frozen pooled features, a default-initialised nn.Linear,
    AdamW at `lr` for `epochs` epochs, batch 32; test accuracy at the best validation epoch."""
    torch.manual_seed(seed)
    model, mean, std = _build(Recipe(model=model_name, unfreeze='classifier'), len(split['class_names']),
                              split['image_size'])
    model.eval()
    with torch.no_grad():
        feats = {k: torch.cat([model.forward_head(model.forward_features(normalize_batch(
            x[i:i + 250], mean, std)), pre_logits=True) for i in range(0, len(x), 250)])
            for k, (x, _) in split['arrays'].items()}
    labels = {k: y for k, (_, y) in split['arrays'].items()}
    head = nn.Linear(feats['train'].shape[1], len(split['class_names']))
    opt = torch.optim.AdamW(head.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    acc = lambda k: (head(feats[k]).argmax(1) == labels[k]).float().mean().item()  # noqa: E731
    best = (-1.0, 0.0, 0)
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(feats['train']), generator=order)
        for i in range(0, len(perm), 32):
            idx = perm[i:i + 32]
            loss = F.cross_entropy(head(feats['train'][idx]), labels['train'][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            val, test = acc('val'), acc('test')
        if val > best[0]:
            best = (val, test, epoch)
    return dict(recipe=dict(model=model_name, kind='linear_probe', epochs=epochs, lr=lr), seed=seed,
                best_val=best[0], test=best[1], best_epoch=best[2])


_SCRATCH = Recipe(model='animals_cnn5', epochs=10)
_LITE0_HEAD = Recipe(model='tf_efficientnet_lite0', unfreeze='classifier', epochs=3)
_LITE0_ALL = Recipe(model='tf_efficientnet_lite0', unfreeze='all', epochs=5)

#: Named experiments of the README's recipe table: each switches one ingredient relative to its neighbours.
EXPERIMENTS: dict[str, Recipe] = {
    'plain_cnn': Recipe(model='plain_cnn', optimizer='adam', epochs=10),
    'cnn_sgd_aug': replace(_SCRATCH, optimizer='sgd', lr=0.01, weight_decay=1e-4, augment=True),
    'cnn_adamw': _SCRATCH,
    'cnn_adamw_aug': replace(_SCRATCH, augment=True),
    'cnn_adamw_aug_ema': replace(_SCRATCH, augment=True, ema=True),
    'cnn_adamw_aug_ls': replace(_SCRATCH, augment=True, label_smoothing=0.1),
    'cnn_adamw_aug_mixup': replace(_SCRATCH, augment=True, mixup=True, label_smoothing=0.1),
    'cnn_adamw_aug_ema_ls_zero': replace(_SCRATCH, augment=True, ema=True, label_smoothing=0.1, head_init=0.0),
    'lite0_head_timm_init': _LITE0_HEAD,
    'lite0_head_zero_init': replace(_LITE0_HEAD, head_init=0.0),
    'lite0_head_zero_init_ema': replace(_LITE0_HEAD, head_init=0.0, ema=True),
    'lite0_all_scale0.1': replace(_LITE0_ALL, backbone_lr_scale=0.1, head_init=0.0),
    'lite0_all_scale1': replace(_LITE0_ALL, backbone_lr_scale=1.0, head_init=0.0),
    'lite0_all_auto_scale0.1': replace(_LITE0_ALL, backbone_lr_scale=0.1, head_init=0.0, lr='auto'),
    'lite0_all_auto_scale1': replace(_LITE0_ALL, backbone_lr_scale=1.0, head_init=0.0, lr='auto'),
    'lite0_all_scale1_aug_ema': replace(_LITE0_ALL, backbone_lr_scale=1.0, head_init=0.0, augment=True, ema=True),
}
