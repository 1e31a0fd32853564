"""The learner factory: --weights loads a torchvision state_dict into fastai's body."""

import pytest
import torch
import torchvision

from tests.train.tiny import tiny_split
from vehicle_ray.errors import InputError
from vehicle_ray.train.learner import build_dataloaders, build_learner, pretrained_state_dict


@pytest.fixture(scope="module")
def dls_and_recipe(tmp_path_factory):
    data, recipe, valid_idx = tiny_split(tmp_path_factory.mktemp("lrn"), train=20, seed=2)
    return build_dataloaders(data, recipe, valid_idx), recipe


def test_weights_file_is_loaded_into_the_body(dls_and_recipe, tmp_path):
    dls, recipe = dls_and_recipe
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    recipe = recipe.with_overrides(pretrained=True, weights=str(path))
    learn = build_learner(dls, recipe, pretrained_state_dict(recipe))
    assert torch.equal(learn.model[0][0].weight, source.conv1.weight)
    assert torch.equal(learn.model[0][7][1].conv2.weight, source.layer4[1].conv2.weight)


def test_wrong_weights_are_a_clear_error(dls_and_recipe, tmp_path):
    dls, recipe = dls_and_recipe
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    recipe = recipe.with_overrides(pretrained=True, weights=str(path))
    with pytest.raises(InputError, match="do not fit resnet18"):
        build_learner(dls, recipe, pretrained_state_dict(recipe))
    with pytest.raises(InputError, match="--weights file not found"):
        pretrained_state_dict(recipe.with_overrides(weights=str(tmp_path / "none.pth")))


def test_unknown_arch(dls_and_recipe):
    dls, recipe = dls_and_recipe
    with pytest.raises(InputError, match="unknown --arch 'resnet9000'"):
        build_learner(dls, recipe.with_overrides(arch="resnet9000"))
