"""python -m course_utils.deploy.predict: a tiny exported model (3 classes) on real image files, bad files, bad models."""
import subprocess
import sys

import pytest
import torch
from PIL import Image
from torch import nn

from course_utils import data, deploy
from course_utils.data import decoding
from course_utils.deploy import predict
from course_utils.models import checkpoints
from course_utils.models.weights import Preprocessing

pytest.importorskip("onnxruntime")
CLASSES = ["cats", "dogs", "owls"]
PRE = Preprocessing(resize=20, crop=16, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), interpolation="bicubic")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


@pytest.fixture(scope="module")
def model_file(net, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "classifier.onnx"
    program = torch.onnx.export(net, (torch.randn(2, 3, 16, 16),), dynamo=True, verbose=False,
                                input_names=["images"], output_names=["logits"],
                                dynamic_shapes={"input": {0: torch.export.Dim("batch")}})
    deploy.save_onnx(program, path)
    plain = path.with_name("plain.onnx")
    plain.write_bytes(path.read_bytes())
    assert predict.attach_metadata(path, classes=CLASSES, preprocessing=PRE, val_acc=0.75) == path
    return path


def reference(net, path):
    """Class and probability from the PyTorch net, with the training pipeline's evaluation transform."""
    image = data.build_transforms(PRE, augment=False)["val"](decoding.load_rgb(path))
    probabilities = net(image.unsqueeze(0)).softmax(dim=1)[0]
    return CLASSES[probabilities.argmax().item()], probabilities.max().item()


class Done:
    """What a run printed and returned (like subprocess.CompletedProcess)."""

    def __init__(self, returncode, out, err):
        self.returncode, self.stdout, self.stderr = returncode, out, err


@pytest.fixture
def run(capsys):
    """The command line in this process (quick); one test below runs the real `python -m` command."""
    def call(*args):
        capsys.readouterr()
        code = predict.main([str(a) for a in args])
        captured = capsys.readouterr()
        return Done(code, captured.out, captured.err)
    return call


def test_metadata_travels_inside_the_model_file_as_a_checkpoint_describes_it(model_file, net, tmp_path):
    session = deploy.onnx_session(model_file, threads=1)
    described = predict.read_metadata(session)
    saved = checkpoints.load(checkpoints.save(net, tmp_path / "net.pt", classes=CLASSES, preprocessing=PRE,
                                              val_acc=0.75), into=net)
    assert (described.classes, described.preprocessing, described.info) == (CLASSES, PRE, {"val_acc": 0.75})
    assert vars(described) == {key: getattr(saved, key) for key in vars(described)}
    with pytest.raises(ValueError, match="plain.onnx holds no class names .*attach_metadata"):
        plain = model_file.with_name("plain.onnx")
        predict.read_metadata(deploy.onnx_session(plain, threads=1), path=plain)


def test_prints_class_and_probability_of_files_and_folders(model_file, net, tiny_dataset, tmp_path):
    one = tiny_dataset / "val" / "owls" / "0.png"
    (tmp_path / "more" / ".ipynb_checkpoints").mkdir(parents=True)
    for i, source in enumerate(sorted((tiny_dataset / "train" / "dogs").glob("*.png"))[:2]):
        (tmp_path / "more" / f"{i}.png").write_bytes(source.read_bytes())
    (tmp_path / "more" / ".ipynb_checkpoints" / "0-checkpoint.png").write_bytes(one.read_bytes())
    (tmp_path / "more" / "notes.txt").write_text("not an image")
    done = subprocess.run([sys.executable, "-m", "course_utils.deploy.predict", str(model_file), str(one),
                           str(tmp_path / "more")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().split("\n")
    assert [line.split(": ")[0] for line in lines] == [str(one), str(tmp_path / "more" / "0.png"),
                                                      str(tmp_path / "more" / "1.png")]
    for line in lines:
        path, answer = line.rsplit(": ", 1)
        name, percent = answer.rstrip("%)").split(" (")
        expected_name, expected_p = reference(net, path)
        assert name == expected_name and float(percent) == pytest.approx(100 * expected_p, abs=0.06)


def test_an_unreadable_file_is_named_and_the_others_still_classified(model_file, run, tiny_dataset, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    good = tiny_dataset / "val" / "cats" / "1.png"
    done = run(model_file, tmp_path / "broken.jpg", good, tmp_path / "missing.png")
    assert done.returncode == 1
    assert done.stdout.startswith(f"{good}: ")
    assert "broken.jpg" in done.stderr and "Cannot read image" in done.stderr
    assert f"{tmp_path / 'missing.png'}: no such file or folder" in done.stderr
    assert "1 of 3 inputs classified" in done.stderr


def test_nothing_classified_or_no_usable_model_exits_with_2(model_file, run, tmp_path, tiny_dataset):
    (tmp_path / "empty").mkdir()
    done = run(model_file, tmp_path / "empty")
    assert done.returncode == 2 and "no image files in this folder" in done.stderr
    image = tiny_dataset / "val" / "cats" / "0.png"
    done = run(model_file.with_name("plain.onnx"), image)
    assert done.returncode == 2 and "holds no class names" in done.stderr
    done = run(tmp_path / "nothing.onnx", image)
    assert done.returncode == 2 and "No ONNX model at" in done.stderr
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    done = run(tmp_path / "junk.onnx", image)
    assert done.returncode == 2 and "cannot load" in done.stderr and "junk.onnx" in done.stderr


def test_a_real_eurosat_image(model_file, run, eurosat_folder):
    photo = sorted((eurosat_folder / "Forest").glob("*.jpg"))[0]
    done = run(model_file, photo)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{photo}: ") and done.stdout.split(": ")[1].split(" (")[0] in CLASSES


def test_an_exif_rotated_photo_is_classified_upright(model_file, run, net, tmp_path):
    pixels = torch.zeros(24, 40, 3, dtype=torch.uint8)
    pixels[:, :20, 0] = 255   # red on the left half as stored
    exif = Image.Exif()
    exif[0x0112] = 6            # "rotate 90 degrees clockwise to show"
    Image.fromarray(pixels.numpy()).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    assert decoding.load_rgb(tmp_path / "phone.jpg").size == (24, 40), "load_rgb shows the photo upright"
    done = run(model_file, tmp_path / "phone.jpg")
    name, expected_p = reference(net, tmp_path / "phone.jpg")
    assert done.returncode == 0 and f": {name} ({100 * expected_p:.1f}%)" in done.stdout
