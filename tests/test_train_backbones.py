"""Backbones table, head replacement, local pretrained weights, no silent random fallback, freezing."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from safetensors.torch import save_file  # noqa: E402

from cxr.errors import ConfigError, TrainError  # noqa: E402
from cxr.train.backbones import (  # noqa: E402
    BACKBONES,
    backbone_normalization,
    classifier,
    create_backbone,
    resolve_timm_name,
    set_phase,
    train_mode,
)

TEST_MODELS = ("test_resnet", "test_efficientnet", "test_vit")


def test_table_names_the_studys_five_backbones() -> None:
    assert {k: v.timm_name for k, v in BACKBONES.items()} == {
        "convnext_base": "convnext_base",
        "densenet121": "densenet121",
        "vgg19": "vgg19",
        "resnetv2_50": "resnetv2_50",
        "xception": "legacy_xception",
    }
    assert all(timm.is_model(b.timm_name) for b in BACKBONES.values())


@pytest.mark.parametrize("name, expected", [("xception", "legacy_xception"), ("test_vit", "test_vit")])
def test_table_keys_and_any_timm_name_resolve(name: str, expected: str) -> None:
    assert resolve_timm_name(name) == expected


def test_unknown_name_gets_did_you_mean() -> None:
    with pytest.raises(ConfigError) as info:
        create_backbone("convnext_bas", 4)
    assert info.value.hint is not None and "convnext_base" in info.value.hint


@pytest.mark.parametrize("name", TEST_MODELS)
def test_head_is_replaced_for_four_classes(name: str) -> None:
    model = create_backbone(name, 4, seed=0).eval()
    size = 32 if name != "test_vit" else 160
    with torch.no_grad():
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 4)


def test_seeded_init_is_repeatable_and_leaves_global_rng_alone() -> None:
    before = torch.get_rng_state()
    a = create_backbone("test_resnet", 4, seed=3).state_dict()
    b = create_backbone("test_resnet", 4, seed=3).state_dict()
    c = create_backbone("test_resnet", 4, seed=4).state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A 1000-class test_resnet state dict on disk, standing in for downloaded ImageNet weights."""
    src = timm.create_model("test_resnet", num_classes=1000)
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    folder = tmp_path_factory.mktemp("weights")
    save_file(state, str(folder / "test_resnet.safetensors"))
    return folder, state


@pytest.mark.parametrize("as_folder", [False, True])
def test_pretrained_from_local_file_or_folder(
    imagenet_like: tuple[Path, dict[str, torch.Tensor]], as_folder: bool
) -> None:
    folder, state = imagenet_like
    where = folder if as_folder else folder / "test_resnet.safetensors"
    model = create_backbone("test_resnet", 4, pretrained=where, seed=0)
    got = model.state_dict()
    body = [k for k in state if not k.startswith("fc.")]
    assert body and all(torch.equal(got[k], state[k]) for k in body)
    assert got["fc.weight"].shape == (4, state["fc.weight"].shape[1])


def test_headless_weights_file_loads_and_only_the_head_stays_random(
    imagenet_like: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    """Backbone-only files (like the Keras Xception weights in ../shared) are common: no head is fine."""
    _, state = imagenet_like
    headless = {k: v for k, v in state.items() if not k.startswith("fc.")}
    save_file(headless, str(tmp_path / "body.safetensors"))
    got = create_backbone("test_resnet", 3, pretrained=tmp_path / "body.safetensors", seed=0).state_dict()
    assert all(torch.equal(got[k], v) for k, v in headless.items())
    missing_one = dict(headless)
    missing_one.pop(next(k for k in headless if k.endswith("weight")))
    save_file(missing_one, str(tmp_path / "short.safetensors"))
    with pytest.raises(TrainError, match="1 tensor\\(s\\) missing"):
        create_backbone("test_resnet", 3, pretrained=tmp_path / "short.safetensors")


@pytest.mark.parametrize(
    "name, mean, std",
    [
        ("xception", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # Keras/TF weights scaled to [-1, 1]
        ("densenet121", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ("vgg19", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ],
)
def test_normalisation_comes_from_the_pretrained_config(name: str, mean: tuple, std: tuple) -> None:
    assert backbone_normalization(name) == (mean, std)


@pytest.mark.parametrize(
    "where, message",
    [
        ("missing", "does not exist"),
        ("empty_dir", "no test_resnet.safetensors"),
        ("wrong_arch", "does not fit timm's test_resnet"),
    ],
)
def test_unavailable_weights_stop_with_how_to_provide_them(tmp_path: Path, where: str, message: str) -> None:
    path = tmp_path / where
    if where == "empty_dir":
        path.mkdir()
    if where == "wrong_arch":
        path = tmp_path / "test_resnet.safetensors"
        save_file({"unrelated.weight": torch.zeros(3)}, str(path))
    with pytest.raises(TrainError) as info:
        create_backbone("test_resnet", 4, pretrained=path)
    assert message in info.value.message
    assert info.value.hint is not None and "pretrained: false" in info.value.hint


def test_pretrained_true_offline_is_an_error_not_random_init(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(TrainError) as info:
        create_backbone("test_resnet", 4, pretrained=True)
    assert "cannot load pretrained ImageNet weights" in info.value.message
    assert info.value.hint is not None and "test_resnet.safetensors" in info.value.hint


def _step(model: torch.nn.Module, params: list[torch.nn.Parameter], size: int) -> None:
    opt = torch.optim.SGD(params, lr=0.1)
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("name", TEST_MODELS)
def test_adapt_trains_only_the_head_and_finetune_trains_everything(name: str) -> None:
    size = 32 if name != "test_vit" else 160
    model = create_backbone(name, 4, seed=0)
    head = {id(p) for p in classifier(model).parameters()}
    trainable = set_phase(model, "adapt")
    assert {id(p) for p in trainable} == head
    assert all(p.requires_grad == (id(p) in head) for p in model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_mode(model, "adapt")
    _step(model, trainable, size)
    head_names = {n for n, p in model.named_parameters() if id(p) in head}
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= head_names  # no backbone weight and no BatchNorm statistic moved
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (n in head_names)

    trainable = set_phase(model, "finetune")
    assert len(trainable) == len(list(model.parameters()))
    train_mode(model, "finetune")
    model.zero_grad(set_to_none=True)
    _step(model, trainable, size)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("key", list(BACKBONES))
def test_real_backbones_freeze_all_but_their_new_head(key: str) -> None:
    model = create_backbone(key, 4, seed=0)
    head = list(classifier(model).parameters())
    trainable = set_phase(model, "adapt")
    assert sum(p.numel() for p in trainable) == sum(p.numel() for p in head)
    assert head[0].shape[0] == 4
    assert len(set_phase(model, "finetune")) == len(list(model.parameters()))
    # every trainable parameter takes part in the loss: DDP (find_unused_parameters=False) relies on it
    train_mode(model, "finetune")
    model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("frozen_norm", [False, True])
def test_finetune_can_keep_batchnorm_statistics_frozen(frozen_norm: bool) -> None:
    """Keras' transfer-learning recipe: unfreeze the weights, keep BatchNorm in inference mode."""
    model = create_backbone("test_resnet", 4, seed=0)
    params = set_phase(model, "finetune")
    train_mode(model, "finetune", frozen_norm=frozen_norm)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(m.training != frozen_norm for m in norms) and classifier(model).training
    before = [m.running_mean.clone() for m in norms]
    weight = norms[0].weight.detach().clone()
    _step(model, params, 32)
    moved = [not torch.equal(b, m.running_mean) for b, m in zip(before, norms, strict=True)]
    assert (not any(moved)) if frozen_norm else all(moved)
    assert not torch.equal(weight, norms[0].weight)  # scale and shift still learn


@pytest.mark.parametrize(
    "name, start, frozen_prefixes",
    [
        ("test_resnet", "layer3", ("conv1", "bn1", "layer1", "layer2")),
        ("test_vit", "blocks.1", ("patch_embed",)),
    ],
)
def test_finetune_from_keeps_the_layers_before_it_frozen(
    name: str, start: str, frozen_prefixes: tuple[str, ...]
) -> None:
    size = 32 if name != "test_vit" else 160
    model = create_backbone(name, 4, seed=0)
    trainable = set_phase(model, "finetune", finetune_from=start)
    learns = {n for n, p in model.named_parameters() if p.requires_grad}
    assert learns and all(not n.startswith(frozen_prefixes) for n in learns)
    assert any(n.startswith(start + ".") for n in learns)
    assert {
        n for n, p in model.named_parameters() if id(p) in {id(q) for q in classifier(model).parameters()}
    } <= learns
    train_mode(model, "finetune")
    norms = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    for n, m in norms.items():  # frozen layers run in inference mode; the learning ones in training mode
        assert m.training == any(p.requires_grad for p in m.parameters()), n
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _step(model, trainable, size)
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert moved and moved <= learns
    assert all(p.grad is None for n, p in model.named_parameters() if n not in learns)


def test_finetune_from_an_unknown_module_names_the_real_ones() -> None:
    model = create_backbone("test_resnet", 4, seed=0)
    with pytest.raises(ConfigError, match="no module 'layer9'") as e:
        set_phase(model, "finetune", finetune_from="layer9")
    assert "layer4" in (e.value.hint or "")
    assert len(set_phase(model, "adapt", finetune_from="layer9")) == 2  # adaptation ignores it: head only
