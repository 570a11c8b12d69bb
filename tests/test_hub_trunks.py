"""One pathway builder: the RL extractor and the image classifier read a hub spec the same way."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from hp_rl.hub import parse_hub
from hp_rl.hub.trunks import load_hub_trunks, manifest_entry
from hp_rl.rl.extractor import HubPathwayExtractor
from hp_rl.vision.classifier import HubPathwayClassifier

SHAPE = (3, 40, 40)
SPEC = {
    "experts": [
        {"name": "kept", "source": "random", "arch": "nature_cnn", "input_shape": [3, 40, 40], "frozen": True},
        {"name": "tuned", "source": "random", "arch": "nature_cnn", "input_shape": [1, 36, 36], "lr_scale": 0.5},
        {"name": "default", "source": "random", "arch": "nature_cnn", "input_shape": [3, 40, 40]},
    ]
}


def _both(freeze_experts: bool) -> tuple[HubPathwayExtractor, HubPathwayClassifier]:
    space = spaces.Box(0, 255, SHAPE, np.uint8)
    extractor = HubPathwayExtractor(
        space, SPEC, k=2, features_dim=16, freeze_experts=freeze_experts, expert_lr_scale=4.0
    )
    classifier = HubPathwayClassifier(
        SPEC, 3, k=2, image_shape=SHAPE, features_dim=16, freeze_experts=freeze_experts, expert_lr_scale=4.0
    )
    return extractor, classifier


@pytest.mark.parametrize("freeze_experts", [False, True])
def test_training_modes_and_learning_rate_scales_agree(freeze_experts: bool) -> None:
    extractor, classifier = _both(freeze_experts)
    expected = {} if freeze_experts else {"tuned": 2.0, "default": 4.0}  # spec lr_scale x expert_lr_scale
    assert extractor.lr_scales == classifier.lr_scales == expected
    for name in ("kept", "tuned", "default"):
        frozen = name == "kept" or freeze_experts
        for model in (extractor, classifier):
            trunk = model.pathway.experts[name].trunk
            assert all(p.requires_grad is not frozen for p in trunk.parameters()), (type(model).__name__, name)


def test_both_write_the_same_manifest_entries() -> None:
    extractor, classifier = _both(False)
    from hp_rl.rl.models import hub_manifest

    class _Holder:  # what find_hub_extractors walks: a policy with the extractor inside
        policy = extractor

    rl_entries = hub_manifest(_Holder())["experts"]  # type: ignore[arg-type]
    vision_entries = classifier.hub_manifest()["experts"]
    assert [e["name"] for e in rl_entries] == [e["name"] for e in vision_entries] == ["kept", "tuned", "default"]
    for rl_entry, vision_entry in zip(rl_entries, vision_entries, strict=True):
        assert rl_entry == vision_entry
    tuned = rl_entries[1]
    assert tuned["frozen"] is False and tuned["input_shape"] == [1, 36, 36] and tuned["input_adapter"]
    assert rl_entries[0]["input_adapter"] is None  # same shape as the input: no adapter


def test_trunk_groups_hold_exactly_the_trainable_trunks() -> None:
    extractor, classifier = _both(False)
    groups = classifier.parameter_groups(lr=1e-3)
    by_name = {g["name"]: g for g in groups}
    tuned = {id(p) for p in classifier.pathway.experts["tuned"].trunk.parameters()}
    default = {id(p) for p in classifier.pathway.experts["default"].trunk.parameters()}
    assert {id(p) for p in by_name["trunks_x2"]["params"]} == tuned and by_name["trunks_x2"]["lr"] == 2e-3
    assert {id(p) for p in by_name["trunks_x4"]["params"]} == default
    pathway = {id(p) for p in by_name["pathway"]["params"]}
    assert not pathway & (tuned | default)
    rl_groups = extractor.trunk_parameter_groups()
    assert sorted(rl_groups) == [2.0, 4.0]
    assert {id(p) for p in rl_groups[2.0]} == {id(p) for p in extractor.pathway.experts["tuned"].trunk.parameters()}


def test_without_an_input_shape_the_first_expert_decides() -> None:
    trunks, shape = load_hub_trunks(parse_hub(SPEC), None, freeze_experts=True)
    assert shape == (3, 40, 40)
    assert [t.adapter is None for t in trunks] == [True, False, True]
    assert all(t.lr_scale is None and not t.scheduled for t in trunks)
    scheduled, _ = load_hub_trunks(parse_hub(SPEC), SHAPE, freeze_experts=True, unfreeze_at=0.5)
    assert [t.scheduled for t in scheduled] == [True, True, True] and scheduled[1].lr_scale == 0.5
    assert manifest_entry("kept", trunks[0].trunk)["frozen"] is None  # a bare trunk: no routing wrapper
