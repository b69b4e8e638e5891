"""course_utils.exercise_checks: each exercise's right answer passes; its likely mistakes fail with CheckFailed
and a message that names the fix."""
import numpy as np
import pytest
import torch
from test_checks import IMAGENET_MEAN, fails
from torch import nn

from course_utils import exercise_checks


def _pipeline(*steps):
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(20, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                       v2.ColorJitter(brightness=0.3, contrast=0.3), *steps])


def test_check_normalizes_passes_a_random_pipeline_that_ends_right():
    from torchvision.transforms import v2

    torch.manual_seed(0)
    for _ in range(5):  # several draws of the random transforms
        pipeline = _pipeline(v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, (0.2,) * 3))
        exercise_checks.check_normalizes(pipeline, mean=IMAGENET_MEAN, std=(0.2,) * 3, name="p")


def test_check_normalizes_catches_what_a_range_check_misses():
    from torchvision.transforms import v2

    std = (0.5, 0.5, 0.5)
    with fails("turns a black image into [0.0, 0.0, 0.0] per channel, expected (0 - mean) / std = [-1.0, -1.0, -1.0]"):
        exercise_checks.check_normalizes(_pipeline(v2.ToDtype(torch.float32, scale=True)), mean=(0.5,) * 3, std=std, name="p")
    with fails("expected (0 - mean) / std = [-2.425, -2.28, -2.03]"):  # the wrong statistics
        exercise_checks.check_normalizes(_pipeline(v2.ToDtype(torch.float32, scale=True), v2.Normalize((0.5,) * 3, std)),
                                mean=IMAGENET_MEAN, std=(0.2,) * 3, name="p")
    with fails("expected at most (1 - mean) / std = [1.0, 1.0, 1.0]. Scale the pixels to [0, 1]"):
        exercise_checks.check_normalizes(_pipeline(v2.ToDtype(torch.float32), v2.Normalize((0.5,) * 3, std)),
                                mean=(0.5,) * 3, std=std, name="p")


def test_check_normalizes_reports_a_broken_or_missing_pipeline():
    from torchvision.transforms import v2

    with fails("`p` is still None"):
        exercise_checks.check_normalizes(None, mean=(0.5,) * 3, std=(0.5,) * 3, name="p")
    with fails("`p` fails on a black image: TypeError"):  # Normalize before ToDtype: uint8 input
        exercise_checks.check_normalizes(_pipeline(v2.Normalize((0.5,) * 3, (0.5,) * 3)), mean=(0.5,) * 3, std=(0.5,) * 3,
                                name="p")
    with fails("should return a float (3, H, W) tensor, got a torch.uint8 tensor"):
        exercise_checks.check_normalizes(_pipeline(), mean=(0.5,) * 3, std=(0.5,) * 3, name="p")


def _index(folder, *, hidden=False, any_case=True, sort=True, only_images=True):
    """index_folder as a student might write it; the keywords switch on one mistake each."""
    from pathlib import Path

    names = [p.name for p in Path(folder).iterdir() if p.is_dir() and (hidden or not p.name.startswith("."))]
    classes = sorted(names) if sort else sorted(names, reverse=True)
    samples = []
    for label, c in enumerate(classes):
        for f in sorted((Path(folder) / c).iterdir()):
            ext = f.suffix.lower() if any_case else f.suffix
            if not only_images or (ext in (".jpg", ".jpeg", ".png") and not f.name.startswith(".")):
                samples.append((str(f), label))
    return classes, samples


def test_check_folder_index_passes_the_course_imagefolder_and_a_correct_answer():
    from course_utils.data import folders

    exercise_checks.check_folder_index(_index)
    exercise_checks.check_folder_index(lambda folder: (lambda d: (d.classes, d.samples))(folders.image_folder(folder)))


@pytest.mark.parametrize("mistake, message", [
    ({"hidden": True}, "a hidden folder such as .ipynb_checkpoints is not a class"),
    ({"sort": False}, "The classes are the visible sub-folder names, sorted"),
    ({"any_case": False}, "missed ants/a2.JPG"),
    ({"only_images": False}, "keep image files only"),
])
def test_check_folder_index_fails_each_careless_answer(mistake, message):
    with fails(message):
        exercise_checks.check_folder_index(lambda folder: _index(folder, **mistake))


def test_check_folder_index_unfinished_or_wrong_shape():
    def unfinished(folder):
        raise NotImplementedError()

    with fails("`unfinished` is not implemented yet"):
        exercise_checks.check_folder_index(unfinished)
    with fails("return the pair (classes, samples)"):
        exercise_checks.check_folder_index(lambda folder: _index(folder)[1])
    with fails("samples from index_folder"):  # files unsorted within a class
        exercise_checks.check_folder_index(lambda folder: (_index(folder)[0], _index(folder)[1][::-1]))


class _Lazy(torch.utils.data.Dataset):
    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        from PIL import Image

        path, label = self.samples[index]
        return self.transform(Image.open(path).convert("RGB")), label


class _Eager(_Lazy):
    def __init__(self, samples, transform):
        super().__init__(samples, transform)
        self.items = [_Lazy.__getitem__(self, i) for i in range(len(samples))]

    def __getitem__(self, index):
        return self.items[index]


class _NoRGB(_Lazy):
    def __getitem__(self, index):
        from PIL import Image

        return self.transform(Image.open(self.samples[index][0])), self.samples[index][1]


class _LabelFirst(_Lazy):
    def __getitem__(self, index):
        return tuple(reversed(super().__getitem__(index)))


def test_check_lazy_dataset_passes_a_lazy_dataset():
    exercise_checks.check_lazy_dataset(_Lazy)


@pytest.mark.parametrize("cls, message", [
    (_Eager, "open the file in __getitem__, not in __init__"),
    (_NoRGB, "Convert every image to RGB"),
    (_LabelFirst, "return (transform(image), label), image first"),
])
def test_check_lazy_dataset_fails_each_careless_answer(cls, message):
    with fails(message):
        exercise_checks.check_lazy_dataset(cls)


def test_check_lazy_dataset_unfinished():
    class Unfinished(torch.utils.data.Dataset):
        def __init__(self, samples, transform):
            raise NotImplementedError()

    with fails("is not implemented yet"):
        exercise_checks.check_lazy_dataset(Unfinished)


def test_check_ig_steps_passes_the_fewest_steps_within_tolerance_and_fails_shortcuts():
    from course_utils.inside import attribution

    def right(model, image, target, *, tolerance):
        for n_steps in attribution.IG_STEP_CANDIDATES:
            attr, delta = attribution.attribute(model, image, method="integrated_gradients", target=target,
                                                n_steps=n_steps, return_delta=True)
            miss = abs(delta) / abs(attr.sum().item() - delta)
            if miss <= tolerance:
                break
        return n_steps, miss

    exercise_checks.check_ig_steps(right)
    with fails("`choose_ig_steps(..., tolerance=0.3)[0]` is 64, expected 16"):   # always the most steps
        exercise_checks.check_ig_steps(lambda *a, tolerance: right(*a, tolerance=0.0))
    with fails("`choose_ig_steps(..., tolerance=0.05)[1]` is off"):   # miss relative to the sum, not the change
        exercise_checks.check_ig_steps(lambda *a, tolerance: (right(*a, tolerance=tolerance)[0], 0.5))
    with fails("return a pair (n_steps, miss)"):
        exercise_checks.check_ig_steps(lambda *a, tolerance: 64)


def test_check_engine_choice_wants_the_90th_percentile_within_budget():
    def right(runs_ms, budget_ms):
        p90 = {engine: float(np.percentile(runs, 90)) for engine, runs in runs_ms.items()}
        fitting = [engine for engine, value in p90.items() if value <= budget_ms]
        return min(fitting, key=p90.get) if fitting else None

    def by_median(runs_ms, budget_ms):
        medians = {engine: float(np.median(runs)) for engine, runs in runs_ms.items()}
        fitting = [engine for engine, value in medians.items() if value <= budget_ms]
        return min(fitting, key=medians.get) if fitting else None

    exercise_checks.check_engine_choice(right)
    with fails("is 'spiky', expected 'steady'. Judge by the 90th percentile"):
        exercise_checks.check_engine_choice(by_median)
    with fails("expected None. Return None when no engine fits"):
        exercise_checks.check_engine_choice(lambda runs_ms, budget_ms: right(runs_ms, float("inf")))


def _linear_onnx(path, model):
    """Hand-built ONNX file of Flatten + Linear, the exporter's job done by onnx.helper (fast, no tracing)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    linear = model[1]
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["images"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "weight", "bias"], ["logits"], transB=1)],
        "linear", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
        [numpy_helper.from_array(linear.weight.detach().numpy(), "weight"),
         numpy_helper.from_array(linear.bias.detach().numpy(), "bias")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_check_parity_check_needs_a_real_gap_and_a_tolerance_between_rounding_and_a_broken_export(tmp_path):
    from course_utils import deploy

    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).eval()
    path, images = _linear_onnx(tmp_path / "linear.onnx", model), 3 * torch.randn(4, 3, 2, 2)

    def gap(session, model, images):
        with torch.no_grad():
            return (deploy.run_onnx(session, images) - model(images)).abs().max().item()

    exercise_checks.check_parity_check(gap, 1e-4, path, model, images)
    with fails("accepts a broken export"):
        exercise_checks.check_parity_check(gap, 0.5, path, model, images)
    with fails("`tolerance` is still None"):
        exercise_checks.check_parity_check(gap, None, path, model, images)
    with fails("`parity_gap on a broken export (weights rounded to bfloat16)` is off"):   # measures nothing
        exercise_checks.check_parity_check(lambda session, model, images: 0.0, 1e-4, path, model, images)
    with fails("rejects the correct export"):
        exercise_checks.check_parity_check(gap, -1.0, path, model, images)
