"""course_utils.models.backbones: which torchvision weights are cached, and milliseconds per image."""
import pytest
import torch

from course_utils.models import backbones


def test_cached_torchvision_backbones_looks_in_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert backbones.cached_torchvision_backbones() == {}
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "resnet18-f37072fd.pth").write_bytes(b"")
    assert backbones.cached_torchvision_backbones() == {"resnet18": folder / "resnet18-f37072fd.pth"}


def test_milliseconds_per_image_runs_in_eval_mode_and_restores_the_mode(tiny_cnn):
    modes = []
    tiny_cnn.register_forward_hook(lambda module, args, output: modes.append(module.training))
    tiny_cnn.train()
    ms = backbones.milliseconds_per_image(tiny_cnn, torch.randn(4, 3, 8, 8), repeats=3)
    assert ms > 0 and modes == [False] * 4 and tiny_cnn.training


@pytest.mark.parametrize("images, repeats, message", [
    (torch.randn(3, 8, 8), 3, "non-empty \\(N, 3, H, W\\) batch"),
    (torch.randn(0, 3, 8, 8), 3, "got shape \\(0, 3, 8, 8\\)"),
    (torch.randn(2, 3, 8, 8), 0, "repeats must be a positive integer"),
])
def test_milliseconds_per_image_rejects_bad_input(tiny_cnn, images, repeats, message):
    with pytest.raises(ValueError, match=message):
        backbones.milliseconds_per_image(tiny_cnn, images, repeats=repeats)
