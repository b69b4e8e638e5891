"""Messy real-world folders, images and checkpoints (issue 18): each case is right, or a clear error that
names the bad value or file, the valid choices and the fix. Nothing the user owns is modified or created."""
import math
import os
import unicodedata
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from course_utils import data, train
from course_utils.data import decoding, download, folders
from course_utils.models import checkpoints, replace_head
from course_utils.transfer import features

CLASSES = ("cats", "dogs", "owls")


def _png(path: Path, seed: int = 0, size=(24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _classes(root: Path, classes=CLASSES, per_class: int = 2) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            _png(root / name / f"{i}.png", seed=10 * c + i)
    return root


def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(folder).as_posix(), p.lstat().st_mtime_ns) for p in folder.rglob("*"))


def _cnn(num_classes: int = 5, width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


def _loader(count: int = 10, classes: int = 5, batch_size: int = 4, scale: float = 1.0, **kw) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(count, 3, 8, 8, generator=generator) * scale
    return DataLoader(TensorDataset(images, torch.arange(count) % classes), batch_size=batch_size, **kw)


def _fit(model, *, lr=0.01, epochs=1, checkpoint=None, train_loader=None, **kw):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    optimizer.param_groups[0]["lr"] = lr  # SGD itself refuses a negative lr, not NaN or infinity
    return train.fit(model, nn.CrossEntropyLoss(), optimizer, train_loader or _loader(), _loader(), "cpu",
                     epochs=epochs, checkpoint=checkpoint, progress=False, **kw)


@pytest.fixture
def unwritable(monkeypatch):
    """Make folders refuse new files and sub-folders with EACCES, as a read-only folder does.

    Simulated (os.open with O_CREAT and os.mkdir are refused below the folder) because chmod does not stop
    root, and CI containers often run as root.
    """
    blocked: list[Path] = []
    real_open, real_mkdir = os.open, os.mkdir

    def inside(path) -> bool:
        path = Path(path).absolute()
        return any(path == b or b in path.parents for b in blocked)

    def guarded_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and inside(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if inside(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)

    def block(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        blocked.append(folder.absolute())
        return folder

    return block


# --- images -----------------------------------------------------------------------------------------------

def test_exif_rotated_photo_is_loaded_upright(tmp_path):
    pixels = np.zeros((20, 30, 3), dtype=np.uint8)
    pixels[:5, :5] = (255, 0, 0)  # a red corner, top left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as phones store portrait photos
    path = tmp_path / "c" / "phone.jpg"
    path.parent.mkdir()
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)
    with Image.open(path) as raw:
        upright = ImageOps.exif_transpose(raw).convert("RGB")
    image = decoding.load_rgb(path)
    assert image.size == upright.size == (20, 30)
    assert np.abs(np.asarray(image, dtype=int) - np.asarray(upright, dtype=int)).max() <= 2
    _png(tmp_path / "d" / "x.png")
    cached = data.CachedImages(folders.image_folder(tmp_path), size=10)
    assert tuple(cached[0][0].shape[1:]) == (15, 10)  # taller than wide: upright


def test_avif_files_are_decoded(tmp_path):
    from PIL import features as pil_features

    if not pil_features.check("avif"):
        pytest.skip("this Pillow has no AVIF codec")
    _classes(tmp_path)
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(tmp_path / "cats" / "new.avif")
    folder = folders.image_folder(tmp_path)
    assert any(path.endswith("new.avif") for path, _ in folder.samples)
    image = decoding.load_rgb(tmp_path / "cats" / "new.avif")
    assert image.mode == "RGB" and abs(np.asarray(image).mean() - 200) < 10


def test_heic_files_are_named_with_the_fix(tmp_path):
    if ".heic" in Image.registered_extensions():
        pytest.skip("a HEIF plugin is registered here: .heic files are decoded")
    _classes(tmp_path)
    (tmp_path / "dogs" / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(32))
    with pytest.raises(ValueError, match=r"IMG_0001\.HEIC[\s\S]*pillow-heif[\s\S]*JPEG"):
        folders.image_folder(tmp_path)


@pytest.mark.parametrize("hidden", [".ipynb_checkpoints", "__MACOSX"])
def test_copies_in_hidden_folders_inside_a_class_are_not_images(tmp_path, hidden):
    _classes(tmp_path)
    _png(tmp_path / "cats" / hidden / "0-checkpoint.png")
    folder = folders.image_folder(tmp_path)
    assert len(folder) == 6
    assert not any(hidden in path for path, _ in folder.samples)


def test_class_with_images_only_in_a_hidden_folder_is_empty(tmp_path):
    _classes(tmp_path, classes=("cats", "dogs"))
    _png(tmp_path / "owls" / ".ipynb_checkpoints" / "0-checkpoint.png")
    with pytest.raises(FileNotFoundError, match="owls"):
        folders.image_folder(tmp_path)


def test_broken_symlink_class_folder_is_named(tmp_path):
    _classes(tmp_path, classes=("cats", "dogs"))
    (tmp_path / "owls").symlink_to(tmp_path / "elsewhere" / "owls")
    with pytest.raises(FileNotFoundError, match=r"owls[\s\S]*elsewhere"):
        folders.image_folder(tmp_path)


def test_image_folder_on_a_folder_of_splits_says_use_find_splits(tmp_path):
    _classes(tmp_path / "train")
    _classes(tmp_path / "val")
    with pytest.raises(ValueError, match=r"train/, val/[\s\S]*find_splits"):
        folders.image_folder(tmp_path)


def test_float_tiff_in_unit_range_keeps_its_brightness(tmp_path):
    values = np.linspace(0.0, 1.0, 16 * 16, dtype=np.float32).reshape(16, 16)
    path = tmp_path / "scan.tif"
    Image.fromarray(values, mode="F").save(path)
    image = np.asarray(decoding.load_rgb(path))
    assert image.shape == (16, 16, 3)
    assert abs(image.mean() - 127.5) < 2 and image.max() == 255


def test_float_tiff_outside_any_pixel_range_is_named(tmp_path):
    path = tmp_path / "depth.tif"
    Image.fromarray(np.full((8, 8), 4000.0, dtype=np.float32), mode="F").save(path)
    with pytest.raises(ValueError, match=r"depth\.tif[\s\S]*4000"):
        decoding.load_rgb(path)


@pytest.fixture
def bomb(tmp_path, monkeypatch) -> Path:
    _classes(tmp_path, classes=("cats", "dogs"), per_class=1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 24x20 image is then over twice the limit
    return tmp_path


def test_decompression_bomb_names_the_file(bomb):
    with pytest.raises(ValueError, match=r"0\.png[\s\S]*MAX_IMAGE_PIXELS"):
        decoding.load_rgb(bomb / "cats" / "0.png")
    with pytest.raises(ValueError, match=r"0\.png[\s\S]*MAX_IMAGE_PIXELS"):
        folders.image_folder(bomb)[0]
    with pytest.raises(ValueError, match=r"0\.png[\s\S]*MAX_IMAGE_PIXELS"):
        data.CachedImages(folders.image_folder(bomb), size=8)


def test_class_names_in_other_unicode_forms_are_the_same_class(tmp_path):
    nfc, nfd = unicodedata.normalize("NFC", "été"), unicodedata.normalize("NFD", "été")
    assert nfc != nfd
    _classes(tmp_path / "train", classes=(nfc, "hiver", "zebra"))
    _classes(tmp_path / "val", classes=(nfd, "hiver", "zebra"), per_class=1)
    splits = folders.find_splits(tmp_path)
    assert splits["train"].classes == splits["val"].classes == sorted([nfc, "hiver", "zebra"])
    label = splits["train"].class_to_idx[nfc]
    val_labels = {Path(p).parent.name: y for p, y in splits["val"].samples}
    assert val_labels[nfd] == label


def test_two_folders_that_differ_only_in_unicode_form_are_refused(tmp_path):
    nfc, nfd = unicodedata.normalize("NFC", "été"), unicodedata.normalize("NFD", "été")
    _classes(tmp_path, classes=(nfc, nfd, "hiver"))
    with pytest.raises(ValueError, match="Unicode"):
        folders.image_folder(tmp_path)


def test_empty_dataset_is_refused_before_a_shuffling_loader(tmp_path):
    folder = folders.image_folder(_classes(tmp_path))
    with pytest.raises(ValueError, match=r"no images[\s\S]*find_splits"):
        data.CachedImages(Subset(folder, []), size=8)
    with pytest.raises(ValueError, match=r"no images[\s\S]*find_splits"):
        data.Transformed(Subset(folder, []), transform=None)


# --- the course data folder ---------------------------------------------------------------------------------

FILES = {"train/ants/a.jpg": b"ant one", "train/bees/b.jpg": b"bee one",
         "val/ants/c.jpg": b"ant two", "val/bees/d.jpg": b"bee two"}


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    """A tiny hymenoptera_data/ under data/, its manifest patched in, and a reachable archive of it."""
    tree = tmp_path / "data" / "hymenoptera_data"
    for name, content in FILES.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(content)
    manifest = download.build_manifest(tree)
    monkeypatch.setattr(download, "load_manifest", lambda: manifest)
    archive = tmp_path / "copy.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, content in FILES.items():
            zf.writestr(f"hymenoptera_data/{name}", content)
    return tree, archive.as_uri()


@pytest.mark.parametrize("inside", ["", "train"])
def test_course_data_at_the_dataset_itself_says_how_to_set_it(dataset, monkeypatch, inside):
    tree, url = dataset
    before = _listing(tree)
    monkeypatch.setenv("COURSE_DATA", str(tree / inside))
    with pytest.raises(ValueError, match=rf"COURSE_DATA[\s\S]*{tree.parent}"):
        download.hymenoptera(url=url)
    assert _listing(tree) == before  # no second copy inside the dataset


def test_no_internet_says_where_it_looked_and_creates_nothing(tmp_path, monkeypatch):
    root = tmp_path / "misplaced"
    monkeypatch.setenv("COURSE_DATA", str(root))
    with pytest.raises(ConnectionError, match=rf"{root}[\s\S]*COURSE_DATA"):
        download.hymenoptera(url=(tmp_path / "missing.zip").as_uri())
    assert not root.exists()

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    with pytest.raises(ConnectionError, match=r"name resolution[\s\S]*hymenoptera_data"):
        download.hymenoptera()
    assert not root.exists()


def test_read_only_course_data_without_the_dataset(tmp_path, monkeypatch, unwritable):
    root = unwritable(tmp_path / "readonly")
    before = _listing(root)
    monkeypatch.setenv("COURSE_DATA", str(root))
    with pytest.raises(PermissionError, match=rf"{root}[\s\S]*COURSE_DATA") as info:
        download.hymenoptera(url=(tmp_path / "never-fetched.zip").as_uri())
    assert ".download-" not in str(info.value) and ".tmp" not in str(info.value)
    assert _listing(root) == before


# --- checkpoints and runs -------------------------------------------------------------------------------------

def test_unwritable_runs_folder_for_a_checkpoint(tmp_path, unwritable):
    runs = unwritable(tmp_path / "runs")
    with pytest.raises(PermissionError, match=rf"{runs}[\s\S]*COURSE_RUNS") as info:
        checkpoints.save(_cnn(), runs / "model.pt")
    assert ".tmp" not in str(info.value)


def test_unwritable_cache_dir_for_extract_features(tmp_path, unwritable, monkeypatch):
    folder = folders.image_folder(_classes(tmp_path / "images"))
    images = data.CachedImages(folder, size=8, transform=lambda x: x.float() / 255)
    cache = unwritable(tmp_path / "runs" / "features")
    ran = []
    monkeypatch.setattr(features, "_run_backbone", lambda *a, **k: ran.append(1))
    with pytest.raises(PermissionError, match=rf"{cache}[\s\S]*COURSE_RUNS"):
        features.extract_features(_cnn(), images, cache_dir=cache, progress=False)
    assert not ran  # refused before the backbone ran


def test_unwritable_checkpoint_is_refused_before_training(tmp_path, unwritable, monkeypatch):
    runs = unwritable(tmp_path / "runs")
    monkeypatch.setattr(train, "train_one_epoch", lambda *a, **k: pytest.fail("trained before checking"))
    with pytest.raises(PermissionError, match=rf"{runs}"):
        _fit(_cnn(), checkpoint=runs / "best.pt")


def test_broken_symlink_through_the_feature_cache(tmp_path):
    root = _classes(tmp_path / "images")
    (root / "cats" / "link.png").symlink_to(tmp_path / "gone.png")
    dataset = data.Transformed(folders.image_folder(root), transform=lambda x: x)
    with pytest.raises(FileNotFoundError, match=r"link\.png[\s\S]*gone\.png"):
        features.extract_features(_cnn(), dataset, cache_dir=tmp_path / "cache", progress=False)


@pytest.fixture
def saved(tmp_path) -> Path:
    return checkpoints.save(_cnn(5), tmp_path / "five.pt")


def test_checkpoint_of_another_architecture(saved):
    other = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Linear(32, 5))
    with pytest.raises(ValueError, match=rf"{saved}[\s\S]*architecture"):
        checkpoints.load(saved, into=other)


@pytest.mark.parametrize("keep", [0, 0.5])
def test_truncated_or_empty_checkpoint(saved, keep):
    content = saved.read_bytes()
    saved.write_bytes(content[:int(len(content) * keep)])
    with pytest.raises(ValueError, match=rf"{saved}[\s\S]*(empty|truncated)[\s\S]*checkpoints\.save"):
        checkpoints.load(saved, into=_cnn(5))


def test_five_class_checkpoint_into_a_three_class_model(saved):
    model = _cnn(5)
    replace_head(model, 3)
    with pytest.raises(ValueError, match=rf"{saved}[\s\S]*5 classes[\s\S]*3[\s\S]*replace_head\(model, 5\)"):
        checkpoints.load(saved, into=model)


def test_truncated_zip_of_a_checkpoint(tmp_path):
    path = tmp_path / "ft.pt"
    path.write_bytes(b"PK\x03\x04 not all of it")
    with pytest.raises(ValueError, match=rf"{path}[\s\S]*truncated"):
        checkpoints.load(path)


# --- training and prediction -----------------------------------------------------------------------------------

@pytest.mark.parametrize("lr", [math.nan, math.inf, -0.1])
def test_fit_refuses_a_bad_learning_rate_before_training(lr, monkeypatch):
    monkeypatch.setattr(train, "train_one_epoch", lambda *a, **k: pytest.fail("trained with a bad lr"))
    with pytest.raises(ValueError, match=r"learning rate[\s\S]*1e-3"):
        _fit(_cnn(), lr=lr)


def test_fit_refuses_lr_zero_without_a_scheduler():
    with pytest.raises(ValueError, match=r"lr=0[\s\S]*trains nothing"):
        _fit(_cnn(), lr=0.0)


def test_fit_allows_lr_zero_at_the_start_of_a_warmup():
    model = _cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: epoch / 2)
    assert optimizer.param_groups[0]["lr"] == 0
    train.fit(model, nn.CrossEntropyLoss(), optimizer, _loader(), _loader(), "cpu", epochs=2,
              scheduler=warmup, progress=False)


@pytest.mark.parametrize("lr", [0.0, math.nan])
def test_train_head_refuses_a_learning_rate_that_trains_nothing(lr):
    feats, labels = torch.randn(9, 4), torch.arange(9) % 3
    with pytest.raises(ValueError, match=r"lr[\s\S]*1e-3"):
        features.train_head(feats, labels, feats, labels, num_classes=3, epochs=1, lr=lr)


def test_labels_outside_the_head_are_named(monkeypatch):
    bad = DataLoader(TensorDataset(torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 6])), batch_size=3)
    with pytest.raises(ValueError, match=r"label 6[\s\S]*5 outputs[\s\S]*replace_head"):
        _fit(_cnn(5), train_loader=bad)
    with pytest.raises(ValueError, match=r"label 6[\s\S]*5 outputs"):
        train.evaluate(_cnn(5), nn.CrossEntropyLoss(), bad, "cpu", progress=False)


def test_last_training_batch_of_one_image_under_batchnorm():
    with pytest.warns(UserWarning, match=r"1 image[\s\S]*drop_last=True"):
        history = _fit(_cnn(), train_loader=_loader(count=9, batch_size=4))
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"])


def test_batch_size_one_under_batchnorm_is_refused():
    with pytest.raises(ValueError, match=r"batch_size[\s\S]*BatchNorm"):
        _fit(_cnn(), train_loader=_loader(count=4, batch_size=1))


def test_predict_refuses_unnormalised_pixels():
    with pytest.raises(ValueError, match=r"0-255[\s\S]*Normalize"):
        train.predict(_cnn(), DataLoader(
            TensorDataset(torch.rand(4, 3, 8, 8) * 255, torch.zeros(4, dtype=torch.long)), batch_size=4))


def test_predict_refuses_uint8_and_one_channel_batches():
    uint8 = DataLoader(TensorDataset(torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8),
                                     torch.zeros(4, dtype=torch.long)), batch_size=4)
    with pytest.raises(TypeError, match=r"uint8[\s\S]*ToDtype"):
        train.predict(_cnn(), uint8)
    grey = DataLoader(TensorDataset(torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match=r"1 channel[\s\S]*3[\s\S]*RGB"):
        train.predict(_cnn(), grey)


# --- the instructor's command ---------------------------------------------------------------------------

def test_nbgrader_outside_a_checkout_says_where_it_looked(tmp_path, monkeypatch, capsys):
    from course_admin import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["nbgrader", "06_fine_tuning"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "notebooks") in err and "--source" in err and "Choose from: ." not in err
    assert not (tmp_path / "nbgrader_course").exists()
