"""course_utils.data: data root, split discovery, robust image loading, transforms and the image cache."""
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import Subset, TensorDataset
from torchvision.transforms import v2

from course_utils import data
from course_utils.data import decoding, folders
from course_utils.models.weights import Preprocessing

CLASSES = ["cats", "dogs", "owls"]
PRE = Preprocessing(resize=20, crop=16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), interpolation="bicubic")


def _tree(root: Path, per_class: int, seed: int = 0) -> Path:
    """``root/<class>/<i>.png`` with small random RGB images."""
    generator = torch.Generator().manual_seed(seed)
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (10 + i, 14, 3), generator=generator, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / name / f"{i}.png")
    return root


def test_data_root_prefers_course_data(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_DATA", str(tmp_path))
    assert data.data_root() == tmp_path.resolve()


def test_data_root_defaults_to_the_checkouts_data_folder(monkeypatch):
    monkeypatch.delenv("COURSE_DATA", raising=False)
    assert data.data_root() == Path(__file__).resolve().parent.parent / "data"


def test_find_splits_train_val(tiny_dataset):
    splits = folders.find_splits(tiny_dataset)
    assert set(splits) == {"train", "val"}
    assert (len(splits["train"]), len(splits["val"])) == (12, 6)
    assert splits["train"].classes == splits["val"].classes == CLASSES
    assert Path(splits["val"].samples[0][0]).parent.parent.name == "val"


@pytest.mark.parametrize("val_name", ["valid", "validation"])
def test_find_splits_other_validation_folder_names(tmp_path, val_name):
    _tree(tmp_path / "train", 2)
    _tree(tmp_path / val_name, 1, seed=1)
    splits = folders.find_splits(tmp_path)
    assert (len(splits["train"]), len(splits["val"])) == (6, 3)
    assert {Path(p).parent.parent.name for p, _ in splits["val"].samples} == {val_name}


def test_find_splits_single_folder_is_split_by_seeded_fraction(tmp_path):
    _tree(tmp_path, 5)
    first = folders.find_splits(tmp_path, val_fraction=0.2, seed=3)
    again = folders.find_splits(tmp_path, val_fraction=0.2, seed=3)
    other = folders.find_splits(tmp_path, val_fraction=0.2, seed=4)
    train, val = set(first["train"].indices), set(first["val"].indices)
    assert len(val) == 3 and len(train) == 12
    assert not train & val, "train and val must be disjoint"
    assert train | val == set(range(15)), "every file lands in one split"
    assert first["train"].indices == again["train"].indices and first["val"].indices == again["val"].indices
    assert set(other["val"].indices) != val, "another seed gives another split"
    assert first["train"].classes == first["val"].classes == CLASSES
    image, label = first["val"][0]
    assert image.mode == "RGB" and label in (0, 1, 2)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, True, float("nan")])
def test_find_splits_rejects_bad_val_fraction(tmp_path, fraction):
    _tree(tmp_path, 2)
    with pytest.raises(ValueError, match=rf"between 0 and 1 \(exclusive\) such as 0\.2, got {fraction!r}\. 0\.2 hold"):
        folders.find_splits(tmp_path, val_fraction=fraction)


def test_find_splits_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        folders.find_splits(tmp_path / "nowhere")


def test_non_image_files_are_skipped(tmp_path):
    _tree(tmp_path, 2)
    for name in (".DS_Store", "notes.txt", "._0.jpg", "Thumbs.db"):
        (tmp_path / "cats" / name).write_bytes(b"not an image")
    dataset = folders.image_folder(tmp_path)
    assert len(dataset) == 6
    assert {Path(p).name for p, _ in dataset.samples} == {"0.png", "1.png"}


def test_hidden_folders_are_not_classes(tmp_path):
    _tree(tmp_path, 2)
    for hidden in (".ipynb_checkpoints", "__MACOSX", ".git"):
        (tmp_path / hidden).mkdir()
    (tmp_path / "__MACOSX" / "._0.png").write_bytes(b"resource fork")
    dataset = folders.image_folder(tmp_path)
    assert dataset.classes == sorted(CLASSES)
    assert len(dataset) == 6


def test_folder_without_class_folders_says_what_to_do(tmp_path):
    (tmp_path / "0.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="one sub-folder per class"):
        folders.image_folder(tmp_path)


@pytest.fixture
def odd_modes(tmp_path) -> Path:
    """One class folder with a palette, a greyscale, an RGBA and a CMYK (JPEG) image."""
    folder = tmp_path / "odd" / "cats"
    folder.mkdir(parents=True)
    Image.new("P", (12, 9), color=3).save(folder / "palette.png")
    Image.new("L", (12, 9), color=128).save(folder / "grey.png")
    Image.new("RGBA", (12, 9), color=(10, 20, 30, 100)).save(folder / "rgba.png")
    Image.new("CMYK", (12, 9), color=(10, 20, 30, 40)).save(folder / "cmyk.jpg")
    return folder.parent


def test_odd_image_modes_come_out_rgb(odd_modes):
    dataset = folders.image_folder(odd_modes)
    assert len(dataset) == 4
    for image, _ in dataset:
        assert image.mode == "RGB" and image.size == (12, 9)
    cached = data.CachedImages(dataset, size=9)
    for image, _ in cached:
        assert image.shape == (3, 9, 12) and image.dtype == torch.uint8


@pytest.fixture(params=["png", "jpg"])
def corrupt_folder(tmp_path, request) -> Path:
    """Class folders where one image is cut off half way."""
    _tree(tmp_path, 1)
    path = tmp_path / "dogs" / f"broken.{request.param}"
    Image.fromarray(torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8).numpy()).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return tmp_path


def test_corrupt_image_names_the_file(corrupt_folder):
    dataset = folders.image_folder(corrupt_folder)
    index = next(i for i, (p, _) in enumerate(dataset.samples) if "broken" in p)
    with pytest.raises(ValueError, match="broken"):
        dataset[index]
    with pytest.raises(ValueError, match="broken"):
        data.CachedImages(dataset, size=16)


def test_not_an_image_despite_its_name(tmp_path):
    _tree(tmp_path, 1)
    (tmp_path / "owls" / "fake.jpg").write_text("<html>404</html>")
    dataset = folders.image_folder(tmp_path)
    index = next(i for i, (p, _) in enumerate(dataset.samples) if p.endswith("fake.jpg"))
    with pytest.raises(ValueError, match="fake.jpg"):
        dataset[index]


def test_build_transforms_shapes_and_dtype():
    transforms = data.build_transforms(PRE)
    pil = Image.new("RGB", (30, 25), color=(1, 2, 3))
    tensor = torch.randint(0, 256, (3, 25, 30), dtype=torch.uint8)
    for split in ("train", "val"):
        for image in (pil, tensor):
            out = transforms[split](image)
            assert out.shape == (3, 16, 16) and out.dtype == torch.float32


def test_build_transforms_normalise_like_the_formula():
    rgb = (100, 150, 200)
    out = data.build_transforms(PRE)["val"](Image.new("RGB", (30, 25), color=rgb))
    mean, std = torch.tensor(PRE.mean).view(3, 1, 1), torch.tensor(PRE.std).view(3, 1, 1)
    expected = (torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1) / 255 - mean) / std
    torch.testing.assert_close(out, expected.expand(3, 16, 16), rtol=0, atol=1e-6)


def test_train_pipeline_is_random_and_val_deterministic():
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    transforms = data.build_transforms(PRE)
    torch.manual_seed(0)
    a, b = transforms["train"](image), transforms["train"](image)
    torch.manual_seed(0)
    assert torch.equal(transforms["train"](image), a), "the same seed repeats the augmentation"
    assert not torch.equal(a, b), "two draws of the training pipeline differ"
    assert torch.equal(transforms["val"](image), transforms["val"](image))
    plain = data.build_transforms(PRE, augment=False)
    assert torch.equal(plain["train"](image), plain["val"](image))


@pytest.mark.parametrize("shape", [(3, 5, 6), (2, 3, 5, 6)])
def test_denormalize_inverts_normalize(shape):
    pixels = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    normalised = v2.Normalize(PRE.mean, PRE.std)(pixels)
    torch.testing.assert_close(data.denormalize(normalised, PRE.mean, PRE.std), pixels)


def test_cached_images_store_the_shorter_side(tiny_dataset):
    folder = folders.image_folder(tiny_dataset / "train")
    cached = data.CachedImages(folder, size=20)
    assert len(cached) == len(folder) == 12
    assert cached.classes == folder.classes == CLASSES
    assert cached.targets == folder.targets
    for i, (image, label) in enumerate(cached):
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        assert min(image.shape[1:]) == 20
        assert label == folder.targets[i]


def test_cached_images_on_a_subset(tmp_path):
    _tree(tmp_path, 5)
    val = folders.find_splits(tmp_path, val_fraction=0.4, seed=1)["val"]
    cached = data.CachedImages(val, size=8, transform=v2.CenterCrop(8))
    assert len(cached) == len(val) == 6
    assert cached.classes == CLASSES
    assert cached.targets == [val[i][1] for i in range(len(val))]
    assert all(image.shape == (3, 8, 8) for image, _ in cached)
    plain = Subset(folders.image_folder(tmp_path), [0, 14])  # e.g. from random_split: no .classes of its own
    assert data.CachedImages(plain, size=8).classes == CLASSES
    assert data.CachedImages(plain, size=8).targets == [0, 2]


def test_cached_images_match_decoding_without_the_cache(tiny_dataset):
    val = folders.image_folder(tiny_dataset / "val")
    transform = data.build_transforms(PRE)["val"]
    cached = data.CachedImages(val, size=PRE.resize, transform=transform)
    direct = data.Transformed(val, transform)
    for (a, label_a), (b, label_b) in zip(cached, direct):
        assert label_a == label_b
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_cached_images_reject_other_datasets():
    dataset = TensorDataset(torch.zeros(3, 3, 4, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="TensorDataset"):
        data.CachedImages(dataset, size=4)
    with pytest.raises(TypeError, match="Subset"):
        data.CachedImages(Subset(dataset, [0, 1]), size=4)


def test_cached_images_refuse_a_transformed_dataset(tiny_dataset):
    val = folders.image_folder(tiny_dataset / "val")
    with pytest.raises(TypeError, match="its own transform"):
        data.CachedImages(data.Transformed(val, v2.CenterCrop(8)), size=8)


def test_image_files_follow_subsets_and_wrappers(tiny_dataset):
    val = folders.image_folder(tiny_dataset / "val")
    wrapped = Subset(data.Transformed(val, v2.CenterCrop(8)), [3, 0])
    assert data.image_files(wrapped) == [(val.samples[3][0], val.samples[3][1]), (val.samples[0][0], 0)]
    assert data.image_files(data.CachedImages(val, size=8)) == [(p, int(c)) for p, c in val.samples]


def test_runs_root_is_never_inside_the_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_DATA", str(tmp_path / "datasets"))
    monkeypatch.delenv("COURSE_RUNS", raising=False)
    assert not data.runs_root().is_relative_to(data.data_root())
    monkeypatch.setenv("COURSE_RUNS", str(tmp_path / "mine"))
    assert data.runs_root() == (tmp_path / "mine").resolve()


def test_sixteen_bit_greyscale_keeps_its_brightness(tmp_path):
    import numpy as np

    (tmp_path / "cells").mkdir()
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (16, 1))  # dark to bright
    Image.fromarray(ramp).save(tmp_path / "cells" / "ramp.png")
    assert Image.open(tmp_path / "cells" / "ramp.png").mode.startswith("I")  # really 16-bit on disk
    image, _ = folders.image_folder(tmp_path)[0]
    pixels = np.asarray(image)
    expected = np.rint(ramp / 257.0)
    assert image.mode == "RGB" and np.array_equal(pixels[..., 0], expected) and np.array_equal(pixels[..., 2], expected)
    assert abs(pixels.mean() - 127.5) < 0.5  # Pillow's own convert("RGB") gives about 254
    cached, _ = data.CachedImages(folders.image_folder(tmp_path), size=16)[0]
    assert cached.shape == (3, 16, 64) and abs(cached.float().mean().item() - 127.5) < 1.0


def test_transparent_pixels_are_composited_on_white(tmp_path):
    (tmp_path / "logos").mkdir()
    rgba = Image.new("RGBA", (4, 2), color=(10, 200, 30, 0))  # invisible green
    rgba.putpixel((0, 0), (10, 200, 30, 255))  # one visible green pixel
    rgba.save(tmp_path / "logos" / "logo.png")
    image, _ = folders.image_folder(tmp_path)[0]
    assert image.getpixel((0, 0)) == (10, 200, 30)
    assert image.getpixel((1, 0)) == (255, 255, 255)
    half = Image.new("LA", (2, 2), color=(0, 128))  # black at half opacity over white: mid grey
    assert decoding.to_rgb(half).getpixel((0, 0)) in {(127, 127, 127), (128, 128, 128)}
