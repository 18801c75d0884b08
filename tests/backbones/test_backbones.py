from pathlib import Path

import pytest
import timm
import torch
import torchvision
from timm.layers import SEModule
from torch import nn

from bmdbench.backbones import (
    BACKBONES,
    Backbone,
    backbone_names,
    build_backbone,
    count_parameters,
)
from bmdbench.backbones.tiny import TinyNet
from bmdbench.backbones.vgg import VGG
from bmdbench.errors import CheckpointError, ConfigError


def test_registered_names_in_registration_order() -> None:
    assert backbone_names() == [
        "vgg11_bn",
        "vgg13_bn",
        "vgg16_bn",
        "vgg11_bn_se",
        "resnet18",
        "resnet34",
        "resnet50",
        "tiny",
    ]
    assert backbone_names("vgg*") == ["vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg11_bn_se"]


@pytest.mark.parametrize("name", backbone_names())
def test_forward_and_every_parameter_gets_a_gradient(name: str) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(name)
    assert isinstance(backbone, Backbone)
    x = torch.randn(2, 1, 32, 32)
    out = backbone(x)
    assert out.shape == (2, backbone.embed_dim)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for pname, p in backbone.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: {pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"


def test_any_timm_model_builds_through_the_fallback() -> None:
    name = "mobilenetv3_small_050"
    assert name not in BACKBONES
    backbone = build_backbone(name).eval()
    out = backbone(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, backbone.embed_dim)


def test_unknown_name_lists_the_backbones_and_a_close_match() -> None:
    with pytest.raises(ConfigError) as info:
        build_backbone("vgg11bn_se")
    message = str(info.value)
    assert "did you mean 'vgg11_bn_se'" in message
    assert "resnet50" in message and "timm.list_models()" in message


def test_in_chans() -> None:
    backbone = build_backbone("vgg11_bn", in_chans=3)
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def _conv_bn_params(cfg: list[int | str], in_chans: int) -> int:
    total, channels = 0, in_chans
    for v in cfg:
        if v != "M":
            assert isinstance(v, int)
            total += channels * v * 9 + v + 2 * v  # conv weight + bias, BN weight + bias
            channels = v
    return total


@pytest.mark.parametrize("name", backbone_names("vgg*"))
def test_vgg_has_no_fully_connected_layers(name: str) -> None:
    backbone = build_backbone(name)
    assert isinstance(backbone, VGG)
    assert backbone.embed_dim == 512
    for pname, p in backbone.named_parameters():
        assert 4096 not in p.shape, f"{pname} has a 4096-wide dimension {tuple(p.shape)}"
    cfg = timm.models.vgg.cfgs[name.split("_")[0]]
    se_params = sum(p.numel() for p in backbone.se.parameters())
    assert count_parameters(backbone) == _conv_bn_params(cfg, in_chans=1) + se_params


def test_vgg11_bn_matches_torchvision_features() -> None:
    tv_features = torchvision.models.vgg.make_layers(
        torchvision.models.vgg.cfgs["A"], batch_norm=True
    )
    ours = build_backbone("vgg11_bn", in_chans=3)
    assert count_parameters(ours) == count_parameters(tv_features) == 9_225_984
    assert list(ours.state_dict()) == [f"features.{k}" for k in tv_features.state_dict()]


def test_vgg11_bn_se_blocks_end_each_stage() -> None:
    backbone = build_backbone("vgg11_bn_se")
    assert isinstance(backbone, VGG)
    blocks = [se for se in backbone.se if isinstance(se, SEModule)]
    assert len(blocks) == len(backbone.se) == 5
    assert [se.fc1.in_channels for se in blocks] == [64, 128, 256, 512, 512]
    assert [se.fc1.out_channels for se in blocks] == [4, 8, 16, 32, 32]  # reduction 16
    # SE blocks whose gate is 1 (fc2 weight 0, bias large) make it the plain VGG-11-BN
    plain = build_backbone("vgg11_bn")
    features = {k: v for k, v in backbone.state_dict().items() if k.startswith("features.")}
    plain.load_state_dict(features)
    x = torch.randn(2, 1, 32, 32)
    backbone.eval()
    plain.eval()
    assert not torch.allclose(backbone(x), plain(x))
    with torch.no_grad():
        for se in blocks:
            assert se.fc2.bias is not None
            se.fc2.weight.zero_()
            se.fc2.bias.fill_(100.0)
    torch.testing.assert_close(backbone(x), plain(x))


def test_count_parameters_trainable_only() -> None:
    backbone = build_backbone("tiny")
    assert isinstance(backbone, TinyNet)
    total = count_parameters(backbone)
    backbone.features[0].weight.requires_grad_(False)
    assert count_parameters(backbone, trainable_only=True) == total - 8 * 1 * 9


# --- pretrained weights ---------------------------------------------------------------


def _randomise(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for value in state.values():
        if value.is_floating_point():
            value.uniform_(0.5, 1.5)
    return state


def _torchvision_vgg11_bn_state_dict() -> dict[str, torch.Tensor]:
    """torchvision ``vgg11_bn(weights=None)``'s state dict: its real ``features`` (3-channel),
    and small stand-ins for the ≈ 123 M-parameter classifier, under torchvision's key names."""
    with torch.device("meta"):
        layout = torchvision.models.vgg11_bn(weights=None).state_dict()
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["A"], batch_norm=True)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state |= {k: torch.zeros(2) for k in layout if k.startswith("classifier.")}
    assert list(state) == list(layout)
    return _randomise(state)


@pytest.fixture(scope="module")
def vgg11_bn_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    state = _torchvision_vgg11_bn_state_dict()
    path = tmp_path_factory.mktemp("weights") / "vgg11_bn_torchvision.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("name", ["vgg11_bn", "vgg11_bn_se"])
def test_load_torchvision_vgg11_bn(vgg11_bn_file: tuple[Path, dict], name: str) -> None:
    path, original = vgg11_bn_file
    backbone = build_backbone(name, pretrained=path)
    loaded = backbone.state_dict()
    # the RGB first conv is summed over its input channels
    torch.testing.assert_close(
        loaded["features.0.weight"], original["features.0.weight"].sum(dim=1, keepdim=True)
    )
    for key in ("features.4.weight", "features.1.running_var", "features.26.bias"):
        torch.testing.assert_close(loaded[key], original[key])
    assert torch.isfinite(backbone(torch.randn(2, 1, 32, 32))).all()


def test_load_wrapped_checkpoint_with_module_prefix(tmp_path: Path) -> None:
    source = build_backbone("tiny")
    _randomise(source.state_dict())
    path = tmp_path / "tiny.pt"
    wrapped = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": wrapped, "epoch": 3}, path)
    target = build_backbone("tiny", pretrained=path)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value)


@pytest.mark.parametrize("layout", ["timm", "torchvision"])
def test_load_resnet18(tmp_path: Path, layout: str) -> None:
    model: nn.Module = (
        timm.create_model("resnet18", pretrained=False)
        if layout == "timm"
        else torchvision.models.resnet18(weights=None)
    )
    original = _randomise(model.state_dict())
    path = tmp_path / f"resnet18_{layout}.pth"
    torch.save({"model": original}, path)
    loaded = build_backbone("resnet18", pretrained=path).checkpoint_root.state_dict()
    torch.testing.assert_close(
        loaded["conv1.weight"], original["conv1.weight"].sum(dim=1, keepdim=True)
    )
    for key in ("layer1.0.conv1.weight", "layer4.1.bn2.running_mean"):
        torch.testing.assert_close(loaded[key], original[key])


class _NotWeights:
    pass


def _save(state: object, tmp_path: Path) -> Path:
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    return path


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        build_backbone("tiny", pretrained=tmp_path / "nope.pth")


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot load") as info:
        build_backbone("tiny", pretrained=path)
    assert "\n" not in str(info.value)


def test_pickled_object_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot load"):
        build_backbone("tiny", pretrained=_save(_NotWeights(), tmp_path))


def test_file_without_tensors_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no state_dict"):
        build_backbone("tiny", pretrained=_save({"epoch": 3}, tmp_path))


def test_other_architecture_has_no_matching_keys(tmp_path: Path) -> None:
    path = _save(build_backbone("tiny").state_dict(), tmp_path)
    with pytest.raises(CheckpointError, match="no weights for backbone 'resnet18'"):
        build_backbone("resnet18", pretrained=path)


def test_shape_mismatch_names_the_key(tmp_path: Path) -> None:
    state = build_backbone("tiny").state_dict()
    state["features.3.weight"] = torch.zeros(16, 4, 3, 3)
    with pytest.raises(CheckpointError, match=r"'features\.3\.weight' has shape"):
        build_backbone("tiny", pretrained=_save(state, tmp_path))


def test_missing_weights_are_an_error(tmp_path: Path) -> None:
    state = build_backbone("tiny").state_dict()
    del state["features.4.running_var"]
    with pytest.raises(CheckpointError, match=r"lacks 1 weights .*features\.4\.running_var"):
        build_backbone("tiny", pretrained=_save(state, tmp_path))


def test_extra_weights_are_an_error(tmp_path: Path) -> None:
    state = build_backbone("vgg11_bn_se").state_dict()
    with pytest.raises(CheckpointError, match=r"does not have .*'se\.0\."):
        build_backbone("vgg11_bn", pretrained=_save(state, tmp_path))
