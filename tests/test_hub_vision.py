"""ImageNet backbones (torchvision, timm) as hub experts: the input adapter here, the backbones in the extra env."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hp_rl.hub import ExpertSpec, HubSpecError, build_input_adapter, load_expert
from hp_rl.hub.vision_sources import IMAGENET_MEAN, IMAGENET_STD, ImageNetInput, vision_available


def test_grey_stack_to_normalised_rgb() -> None:
    frames = torch.rand(2, 4, 84, 84)
    out = ImageNetInput("grey", size=84)(frames)
    assert out.shape == (2, 3, 84, 84)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = (frames[:, -1:].expand(-1, 3, -1, -1) - mean) / std  # the newest frame on every channel
    assert torch.allclose(out, expected, atol=1e-6)


def test_last_three_frames_become_rgb_and_resize() -> None:
    frames = torch.rand(2, 4, 84, 84)
    out = ImageNetInput("last3", size=112, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))(frames)
    assert out.shape == (2, 3, 112, 112)
    constant = torch.zeros(1, 4, 84, 84)
    constant[:, 1], constant[:, 2], constant[:, 3] = 0.25, 0.5, 0.75
    rgb = ImageNetInput("last3", size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))(constant)
    assert torch.allclose(rgb.mean(dim=(2, 3)), torch.tensor([[0.25, 0.5, 0.75]]), atol=1e-5)
    with pytest.raises(ValueError, match="at least 3 channels"):
        ImageNetInput("last3")(torch.rand(1, 2, 84, 84))
    with pytest.raises(ValueError, match="frames must be"):
        ImageNetInput("colour")


def test_missing_extra_is_a_clear_error() -> None:
    if vision_available("torchvision"):
        pytest.skip("torchvision is installed")
    with pytest.raises(HubSpecError, match=r"pip install -e '\.\[timm\]'"):
        load_expert(ExpertSpec(name="tv", source="torchvision", arch="resnet18", options={"weights": "none"}))


@pytest.mark.extra
def test_torchvision_local_weights_match_the_model(tmp_path: Path) -> None:
    if not vision_available("torchvision"):
        pytest.skip("torchvision is not installed (optional extra 'timm')")
    import torchvision

    model = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)
    expert = load_expert(
        ExpertSpec(
            name="tv", source="torchvision", arch="resnet18", path=str(path), options={"size": 64, "frames": "last3"}
        ),
        (4, 84, 84),
    )
    assert expert.info.features_dim == 512 and expert.info.input_shape == (4, 84, 84)
    frames = torch.rand(2, 4, 84, 84)
    model.fc = torch.nn.Identity()
    with torch.no_grad():
        expected = model(ImageNetInput("last3", 64)(frames))
        assert torch.allclose(expert.eval()(frames), expected, atol=1e-5)
    # MinAtar-like frames reach it through the generic adapters (resize + channel map).
    adapter = build_input_adapter((6, 10, 10), expert.info, "tv")
    assert adapter is not None
    assert expert(adapter(torch.rand(2, 6, 10, 10))).shape == (2, 512)
    with pytest.raises(HubSpecError, match="no weights"):
        load_expert(ExpertSpec(name="tv", source="torchvision", arch="resnet18", options={"weights": "NOPE"}))
    with pytest.raises(HubSpecError, match="no model"):
        load_expert(ExpertSpec(name="tv", source="torchvision", arch="resnet999", options={"weights": "none"}))


@pytest.mark.extra
def test_timm_local_weights_match_the_model(tmp_path: Path) -> None:
    if not vision_available("timm"):
        pytest.skip("timm is not installed (optional extra 'timm')")
    import timm

    model = timm.create_model("resnet10t", pretrained=False).eval()
    path = tmp_path / "resnet10t.pth"
    torch.save(model.state_dict(), path)
    expert = load_expert(
        ExpertSpec(name="t", source="timm", arch="resnet10t", path=str(path), options={"size": 64}), (4, 84, 84)
    )
    model.reset_classifier(0)
    frames = torch.rand(2, 4, 84, 84)
    config = model.pretrained_cfg
    with torch.no_grad():
        expected = model(ImageNetInput("grey", 64, config["mean"], config["std"])(frames))
        assert torch.allclose(expert.eval()(frames), expected, atol=1e-5)
    assert expert.info.features_dim == model.num_features
    with pytest.raises(HubSpecError, match="no model"):
        load_expert(ExpertSpec(name="t", source="timm", arch="not_a_model_xyz"))
