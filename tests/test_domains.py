"""course_utils.domains: the far domain (scikit-learn's digits as RGB images) and stacked image sets."""
import pytest
import torch

from course_utils import domains

MEAN, STD = (0.5, 0.4, 0.3), (0.5, 0.25, 0.2)  # per-channel on purpose: a mix-up of channels would show


def test_digits_images_are_dark_ink_on_white_in_three_equal_channels():
    images, labels = domains.digits_images(size=16, mean=MEAN, std=STD)
    assert images.shape == (1797, 3, 16, 16) and images.dtype == torch.float32
    assert labels.shape == (1797,) and set(labels.tolist()) == set(range(10))
    pixels = images * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert torch.allclose(pixels[:, 0], pixels[:, 2], atol=1e-6), "the three channels must hold the same grey"
    assert pixels[:, :, 0, 0].mean() > 0.95, "the corners are blank paper (white)"
    assert pixels[:, :, 6:10, 6:10].mean() < 0.8, "the middle holds ink"


def test_digits_split_is_stratified_disjoint_and_repeatable():
    first = domains.digits_splits(size=8, mean=MEAN, std=STD, val_fraction=0.25, seed=3)
    again = domains.digits_splits(size=8, mean=MEAN, std=STD, val_fraction=0.25, seed=3)
    other = domains.digits_splits(size=8, mean=MEAN, std=STD, val_fraction=0.25, seed=4)
    train, val = first["train"], first["val"]
    assert len(train) + len(val) == 1797 and train.classes == list(domains.DIGIT_CLASSES)
    counts = torch.bincount(torch.tensor(val.targets), minlength=10)
    assert counts.min() >= 43 and counts.max() <= 46, f"each class keeps about a quarter for validation: {counts}"
    assert torch.equal(again["val"].images, val.images) and again["val"].targets == val.targets
    assert not torch.equal(other["val"].images, val.images)
    flat = lambda s: {tuple(x.flatten().tolist()) for x in s.images}  # noqa: E731
    assert len(flat(train) & flat(val)) < 20, "validation images come from other scans than the training images"
    image, label = val[0]
    assert image.shape == (3, 8, 8) and isinstance(label, int)


@pytest.mark.parametrize("kwargs, message", [
    ({"size": 4}, "size must be an integer of at least 8"),
    ({"size": 16.0}, "got 16.0"),
    ({"size": 16, "val_fraction": 1.0}, "val_fraction must be a float strictly between 0 and 1"),
    ({"size": 16, "val_fraction": 0}, "got 0"),
])
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        domains.digits_splits(mean=MEAN, std=STD, **kwargs)


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
    from course_utils import download
    from course_utils.models import Preprocessing

    monkeypatch.setattr(download, "hymenoptera", lambda: hymenoptera_folder)
    pre = Preprocessing(resize=40, crop=32, mean=MEAN, std=STD)
    splits = domains.hymenoptera_images(size=24, preprocessing=pre)
    assert splits["val"].images.shape == (153, 3, 24, 24) and splits["val"].classes == ["ants", "bees"]
    assert splits["val"].targets.count(1) == 83
    with pytest.raises(ValueError, match="at least 16"):
        domains.hymenoptera_images(size=8, preprocessing=pre)
