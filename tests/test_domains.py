"""course_utils.transfer.domains: stacked image sets, ants/bees centre crops and EuroSAT patches at one size."""
import pytest
import torch

from course_utils.models.weights import Preprocessing
from course_utils.transfer import domains

MEAN, STD = (0.5, 0.4, 0.3), (0.5, 0.25, 0.2)  # per-channel on purpose: a mix-up of channels would show
PRE = Preprocessing(resize=40, crop=32, mean=MEAN, std=STD)


def test_tensor_images_and_stack_images():
    images = torch.randn(5, 3, 4, 4)
    stacked = domains.stack_images(domains.TensorImages(images, [0, 2, 1, 2, 0], ["a", "b", "c"]))
    assert torch.equal(stacked.images, images) and stacked.targets == [0, 2, 1, 2, 0]
    assert stacked.classes == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\) images and N targets"):
        domains.TensorImages(torch.randn(5, 1, 4, 4), [0] * 5, ["a"])
    with pytest.raises(ValueError, match="empty"):
        domains.stack_images(domains.TensorImages(torch.randn(0, 3, 4, 4), [], ["a"]))


def test_hymenoptera_images_are_centre_crops_of_the_real_folder(hymenoptera_folder, monkeypatch):
    from course_utils.data import download, folders

    monkeypatch.setattr(download, "hymenoptera", lambda: hymenoptera_folder)
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    splits = domains.hymenoptera_images(size=24, preprocessing=PRE)
    assert splits["val"].images.shape == (153, 3, 24, 24) and splits["val"].classes == ["ants", "bees"]
    assert splits["val"].targets.count(1) == 83
    path, _ = folders.find_splits(hymenoptera_folder)["val"].samples[0]
    pixels = splits["val"].images[0] * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)

    def crop_error(shorter_side):  # mean pixel error against a centre crop of the photo resized to shorter_side
        photo = F.pil_to_tensor(Image.open(path).convert("RGB")).float() / 255
        return (F.center_crop(F.resize(photo, shorter_side, antialias=True), 24) - pixels).abs().mean()

    assert crop_error(30) < 0.03 < crop_error(27), "the crop ratio is the backbone's (40 / 32), not 256 / 224"
    with pytest.raises(ValueError, match="size must be an integer of at least 16 such as 96, got 8"):
        domains.hymenoptera_images(size=8, preprocessing=PRE)


def test_eurosat_images_are_whole_patches_resized_and_normalised(eurosat_folder, monkeypatch):
    from PIL import Image

    from course_utils.data import eurosat

    monkeypatch.setattr(eurosat, "eurosat", lambda: eurosat_folder)
    parts = domains.eurosat_images(size=40, preprocessing=PRE, per_class={"train": 3, "val": 1})
    assert set(parts) == {"train", "val"} and parts["val"].classes == eurosat.classes()
    assert parts["train"].images.shape == (30, 3, 40, 40) and parts["train"].targets == [c for c in range(10)
                                                                                          for _ in range(3)]
    listed = eurosat.splits(eurosat_folder, per_class={"val": 1})["val"]
    path, _ = listed.samples[0]
    from torchvision.transforms.v2.functional import pil_to_tensor

    resized = Image.open(path).convert("RGB").resize((40, 40), Image.BILINEAR)
    whole = pil_to_tensor(resized).float() / 255  # the whole patch, nothing cropped
    pixels = parts["val"].images[0] * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    assert (pixels - whole).abs().mean() < 0.02
    with pytest.raises(ValueError, match="size must be an integer of at least 16 such as 96, got 8"):
        domains.eurosat_images(size=8, preprocessing=PRE, per_class={"val": 1})
    with pytest.raises(ValueError, match="Unknown part 'valid'"):
        domains.eurosat_images(size=32, preprocessing=PRE, per_class={"valid": 1})
