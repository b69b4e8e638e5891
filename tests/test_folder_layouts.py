"""find_splits on the folder layouts people bring: each one gives the right splits or names the fix.

Every dataset here is a few 4x4 PNGs; the layouts are spelled the way users spell them (any case).
"""
from pathlib import Path

import pytest
from PIL import Image

from course_utils import data
from course_utils.data import folders

CLASSES = ["cats", "dogs", "owls"]


def _make(root: Path, spec: dict[str, int]) -> Path:
    """``spec`` maps a relative class folder (``"train/cats"``) to its number of images."""
    for relative, count in spec.items():
        folder = root / relative
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (4, 4), color=(i * 40 % 256, len(relative), 7)).save(folder / f"{i}.png")
    return root


def _layout(root: Path, splits: dict[str, int], classes=CLASSES) -> Path:
    return _make(root, {f"{split}/{name}": count for split, count in splits.items() for name in classes})


def _split_folder_names(dataset) -> set[str]:
    return {Path(path).parent.parent.name for path, _ in data.image_files(dataset)}


@pytest.mark.parametrize("train_name, val_name", [
    ("train", "val"), ("train", "valid"), ("train", "validation"), ("Train", "Val"), ("TRAIN", "Validation"),
])
def test_train_and_validation_folders_in_any_case(tmp_path, train_name, val_name):
    _layout(tmp_path, {train_name: 3, val_name: 2})
    splits = folders.find_splits(tmp_path)
    assert set(splits) == {"train", "val"}
    assert splits["train"].classes == splits["val"].classes == CLASSES
    assert (len(splits["train"]), len(splits["val"])) == (9, 6)
    assert _split_folder_names(splits["train"]) == {train_name}
    assert _split_folder_names(splits["val"]) == {val_name}


def test_only_train_is_an_error_that_names_the_fix(tmp_path):
    _layout(tmp_path, {"train": 5})
    with pytest.raises(ValueError, match=r"has train/ but no validation folder.*val_fraction=0\.2") as info:
        folders.find_splits(tmp_path)
    assert str(tmp_path) in str(info.value) and "add a val/ folder" in str(info.value)


def test_only_train_with_val_fraction_is_split_by_class(tmp_path):
    _layout(tmp_path, {"train": 5})
    splits = folders.find_splits(tmp_path, val_fraction=0.4, seed=1)
    assert set(splits) == {"train", "val"} and splits["val"].classes == CLASSES
    val_labels = sorted(label for _, label in data.image_files(splits["val"]))
    assert val_labels == [0, 0, 1, 1, 2, 2]  # 40% of every class
    assert not set(splits["train"].indices) & set(splits["val"].indices)


def test_validation_folder_with_a_class_train_lacks(tmp_path):
    _layout(tmp_path, {"train": 2, "valid": 1})
    _make(tmp_path, {"valid/foxes": 1})
    with pytest.raises(ValueError, match=r"valid \(val\) differ .*missing \[\], extra \['foxes'\]"):
        folders.find_splits(tmp_path)


def test_validation_folder_missing_a_class(tmp_path):
    _layout(tmp_path, {"train": 2})
    _layout(tmp_path, {"val": 1}, classes=["cats", "owls"])
    with pytest.raises(ValueError, match=r"missing \['dogs'\], extra \[\]"):
        folders.find_splits(tmp_path)


def test_train_and_test_is_an_error_test_is_never_validation(tmp_path):
    _layout(tmp_path, {"train": 4, "test": 2})
    with pytest.raises(ValueError, match=r"no validation folder \(test/ is the test set and is kept apart\)"):
        folders.find_splits(tmp_path)


def test_train_and_test_with_val_fraction_keeps_test_apart(tmp_path):
    _layout(tmp_path, {"train": 4, "Test": 2})
    splits = folders.find_splits(tmp_path, val_fraction=0.25)
    assert set(splits) == {"train", "val", "test"}
    assert _split_folder_names(splits["train"]) == _split_folder_names(splits["val"]) == {"train"}
    assert _split_folder_names(splits["test"]) == {"Test"} and len(splits["test"]) == 6
    assert (len(splits["train"]), len(splits["val"])) == (9, 3)


def test_train_val_and_test_returns_all_three(tmp_path):
    _layout(tmp_path, {"train": 3, "val": 2, "test": 1})
    splits = folders.find_splits(tmp_path)
    assert {name: len(ds) for name, ds in splits.items()} == {"train": 9, "val": 6, "test": 3}
    assert {name: _split_folder_names(ds) for name, ds in splits.items()} == {
        "train": {"train"}, "val": {"val"}, "test": {"test"}}
    assert splits["test"].classes == CLASSES


def test_test_folder_with_other_classes(tmp_path):
    _layout(tmp_path, {"train": 2, "val": 1})
    _layout(tmp_path, {"test": 1}, classes=["cats", "dogs"])
    with pytest.raises(ValueError, match=r"\(test\) differ .*missing \['owls'\]"):
        folders.find_splits(tmp_path)


def test_split_folders_without_train(tmp_path):
    _layout(tmp_path, {"val": 2, "test": 2})
    with pytest.raises(ValueError, match=r"has test/, val/ but no train/ folder"):
        folders.find_splits(tmp_path)


def test_two_folders_for_one_split(tmp_path):
    _layout(tmp_path, {"train": 2, "val": 1, "valid": 1})
    with pytest.raises(ValueError, match=r"2 val folders \(val/, valid/\)"):
        folders.find_splits(tmp_path)


def test_val_fraction_beside_a_validation_folder_is_refused(tmp_path):
    _layout(tmp_path, {"train": 2, "val": 1})
    with pytest.raises(ValueError, match="val_fraction=0.3 was given"):
        folders.find_splits(tmp_path, val_fraction=0.3)


@pytest.mark.parametrize("seed", range(5))
def test_single_folder_split_puts_every_class_in_both_splits(tmp_path, seed):
    _make(tmp_path, {"cats": 10, "dogs": 2, "owls": 3})  # 20% of 2 rounds to 0 without stratification
    splits = folders.find_splits(tmp_path, seed=seed)
    for name in ("train", "val"):
        assert {label for _, label in data.image_files(splits[name])} == {0, 1, 2}, name
    assert len(splits["val"]) == 2 + 1 + 1


def test_single_folder_class_with_one_image(tmp_path):
    _make(tmp_path, {"cats": 4, "dogs": 1, "owls": 4})
    with pytest.raises(ValueError, match=r"fewer than 2 images .*\{'dogs': 1\}"):
        folders.find_splits(tmp_path)


def test_single_class_folder_is_an_error(tmp_path):
    _layout(tmp_path, {"hymenoptera_data": 2}, classes=["ants"])  # an extra level, e.g. from a zip file
    with pytest.raises(ValueError, match=r"only one class folder, 'hymenoptera_data'.*pass that folder"):
        folders.find_splits(tmp_path)


@pytest.mark.parametrize("layout", ["split folders", "single folder"])
def test_empty_class_folder_names_split_path_and_fix(tmp_path, layout):
    root = _layout(tmp_path, {"train": 2, "val": 1}) if layout == "split folders" else _make(
        tmp_path, {name: 3 for name in CLASSES})
    empty = (root / "val" / "owls") if layout == "split folders" else (root / "owls")
    for image in empty.iterdir():
        image.unlink()
    (empty / "notes.txt").write_text("not an image")
    split = "val" if layout == "split folders" else tmp_path.name
    with pytest.raises(FileNotFoundError, match=f"class folder {empty} of the split '{split}' has no image") as info:
        folders.find_splits(root)
    assert "delete the folder" in str(info.value)
