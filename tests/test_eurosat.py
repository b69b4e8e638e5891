"""The EuroSAT split: fixed, disjoint, stratified, and loaded as ImageFolders with clear errors."""
from pathlib import Path

import pytest

from course_utils.data import eurosat


def test_stored_split_is_disjoint_stratified_and_in_range():
    lists = eurosat.split_lists()
    assert len(lists["classes"]) == 10
    for name, info in lists["classes"].items():
        seen = set()
        for part, size in lists["sizes"].items():
            numbers = info[part]
            assert len(numbers) == len(set(numbers)) == size, (name, part)
            assert all(1 <= n <= info["images"] for n in numbers), (name, part)
            assert not seen & set(numbers), f"{name}: {part} overlaps an earlier part"
            seen |= set(numbers)


def _fake_eurosat(root: Path, per_class: dict[str, int]) -> Path:
    """Tiny JPEGs at exactly the paths the split names (only the first ``per_class[part]`` of each part)."""
    from PIL import Image

    folder = root / "eurosat" / "2750"
    for label, name in enumerate(eurosat.classes()):
        (folder / name).mkdir(parents=True)
        for part, count in per_class.items():
            for number in eurosat.split_lists()["classes"][name][part][:count]:
                Image.new("RGB", (8, 8), (25 * label, 0, 0)).save(folder / name / f"{name}_{number}.jpg")
    return folder


def test_splits_returns_the_listed_images_with_sorted_class_labels(tmp_path):
    folder = _fake_eurosat(tmp_path, {"train": 3, "val": 2})
    parts = eurosat.splits(folder, per_class={"train": 3, "val": 2})
    assert set(parts) == {"train", "val"}
    assert len(parts["train"]) == 30 and len(parts["val"]) == 20
    assert parts["train"].classes == eurosat.classes() == sorted(eurosat.classes())
    for path, label in parts["val"].samples:
        assert Path(path).parent.name == eurosat.classes()[label]
    image, label = parts["train"][0]
    assert image.size == (8, 8) and label == 0


def test_splits_names_a_missing_image_and_a_bad_request(tmp_path):
    folder = _fake_eurosat(tmp_path, {"train": 1})
    with pytest.raises(FileNotFoundError, match="missing"):
        eurosat.splits(folder, per_class={"train": 2})
    with pytest.raises(ValueError, match="Choose from"):
        eurosat.splits(folder, per_class={"validation": 1})
    with pytest.raises(ValueError, match=r"per_class\['train'\] must be an integer from 1 to 200, got 201\. .*'train'"):
        eurosat.splits(folder, per_class={"train": 201})


def test_eurosat_without_download_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="COURSE_DATA"):
        eurosat.eurosat(tmp_path, download=False)
    assert list(tmp_path.iterdir()) == [], "nothing may be created in the data root"


def test_an_incomplete_copy_is_an_error(tmp_path):
    _fake_eurosat(tmp_path, {"train": 1})
    with pytest.raises(FileNotFoundError, match="incomplete"):
        eurosat.eurosat(tmp_path, download=False)


def test_the_real_copy_matches_the_split(eurosat_folder):
    parts = eurosat.splits(eurosat_folder, per_class={"test": 100})
    assert len(parts["test"]) == 1000


@pytest.mark.parametrize("inside", ["eurosat", "eurosat/2750", "eurosat/2750/Forest"])
def test_a_data_root_inside_the_dataset_says_what_to_set(tmp_path, inside):
    _fake_eurosat(tmp_path, {"train": 1})
    with pytest.raises(ValueError, match=f"COURSE_DATA={tmp_path}"):
        eurosat.eurosat(tmp_path / inside)
    assert not (tmp_path / inside / "eurosat").exists(), "no second copy may be started inside the dataset"


def test_offline_download_says_where_it_looked_and_creates_nothing(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.EuroSAT, "download", offline)
    root = tmp_path / "data"
    with pytest.raises(ConnectionError, match=str(root / "eurosat" / "2750")):
        eurosat.eurosat(root)
    assert not root.exists()


def test_a_download_lands_in_the_data_root_only_when_complete(tmp_path, monkeypatch):
    import torchvision.datasets

    def fake_download(self):
        for name in eurosat.classes():
            (Path(self._data_folder) / name).mkdir(parents=True)
            (Path(self._data_folder) / name / f"{name}_1.jpg").write_bytes(b"jpeg")

    monkeypatch.setattr(torchvision.datasets.EuroSAT, "download", fake_download)
    monkeypatch.setattr(torchvision.datasets.EuroSAT, "_check_exists", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.ImageFolder, "__init__", lambda self, *a, **k: None)
    monkeypatch.setattr(eurosat, "_check_counts", lambda folder: None)
    folder = eurosat.eurosat(tmp_path / "data")
    assert folder == tmp_path / "data" / "eurosat" / "2750"
    assert sorted(p.name for p in folder.iterdir()) == eurosat.classes()


def test_a_read_only_data_root_is_refused_before_downloading(tmp_path, monkeypatch):
    import errno

    import torchvision.datasets

    from course_utils import files

    def never(self):
        raise AssertionError("nothing may be downloaded into a folder that cannot be written")

    monkeypatch.setattr(torchvision.datasets.EuroSAT, "download", never)
    monkeypatch.setattr(files, "write_error", lambda folder, create=True: OSError(errno.EROFS, "read-only"))
    with pytest.raises(PermissionError, match="cannot be written"):
        eurosat.eurosat(tmp_path / "data")
    assert not (tmp_path / "data").exists()
