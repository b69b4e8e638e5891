"""The checks of single exercises: each runs the student's function on a small case built for it.

Each ``check_*`` here belongs to one exercise of one notebook (``Used in:``). It builds a tiny input with
the traps the exercise is about (a hidden folder, a repainted file, a spiky latency, a broken ONNX
export), runs the student's function on it with :func:`course_utils.checks.check_implemented` and
compares the result with the known answer, failing with :class:`course_utils.checks.CheckFailed` and a
message that says what to fix. The general checks that any exercise uses (``check_equal``,
``check_close``, ``check_head``, ...) are in :mod:`course_utils.checks`.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from course_utils.checks import CheckFailed, check_answered, check_close, check_equal, check_implemented, check_shape


def _tiny_tree(root: Any) -> None:
    """Three class folders made in non-alphabetical order, with the traps a real folder holds."""
    from pathlib import Path

    from PIL import Image

    files = {"wasps": ["w1.jpg"], "ants": ["a2.JPG", "a1.jpg", "notes.txt", ".DS_Store"], "bees": ["b1.png", "b0.jpeg"],
             ".ipynb_checkpoints": ["a1.jpg"]}
    for index, (folder, names) in enumerate(files.items()):
        (Path(root) / folder).mkdir()
        for name in names:
            Image.new("RGB", (4 + index, 3), color=(40 * index, 0, 0)).save(Path(root) / folder / name, format="PNG")


def check_folder_index(func: Callable, name: str = "index_folder") -> None:
    """Fail unless ``func(folder)`` returns ``(classes, samples)`` as ``ImageFolder`` builds them.

    The check's folder has classes made in the order wasps, ants, bees, a hidden ``.ipynb_checkpoints``
    folder, ``notes.txt``, ``.DS_Store`` and an upper-case ``.JPG``. Expected: the sorted visible class
    names, and ``(path, label)`` pairs of the image files only, sorted by class, then file name.

    Used in: 01_data_loading.ipynb
    """
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        _tiny_tree(tmp)
        result = check_implemented(func, Path(tmp))
        if not isinstance(result, tuple) or len(result) != 2:
            raise CheckFailed(f"`{name}` returned {type(result).__name__}; return the pair (classes, samples).")
        classes, samples = list(result[0]), list(result[1])
        expected = ["ants", "bees", "wasps"]
        if any(str(c).startswith(".") for c in classes):
            raise CheckFailed(f"`{name}` found the classes {classes}: a hidden folder such as .ipynb_checkpoints "
                              "is not a class. Skip names that start with '.'.")
        check_equal(classes, expected, f"classes from {name}",
                    hint="The classes are the visible sub-folder names, sorted (sorted(...)), whatever order the "
                         "disk lists them in.")
        try:
            got = [(Path(p).relative_to(tmp).as_posix(), int(y)) for p, y in samples]
        except (TypeError, ValueError):
            raise CheckFailed(f"`{name}` returned samples such as {samples[:2]!r}; each sample should be a pair "
                              "(full path of the file, label as an int).") from None
    files = [f for f, _ in got]
    if any(f.endswith((".txt", ".DS_Store")) for f in files):
        raise CheckFailed(f"`{name}` lists {files}: keep image files only (an image extension, not hidden).")
    if "ants/a2.JPG" not in files:
        raise CheckFailed(f"`{name}` missed ants/a2.JPG: compare extensions in any letter case (name.lower()).")
    check_equal(got, [("ants/a1.jpg", 0), ("ants/a2.JPG", 0), ("bees/b0.jpeg", 1), ("bees/b1.png", 1),
                      ("wasps/w1.jpg", 2)], f"samples from {name} (paths relative to the folder)",
                hint="Sort by class, then by file name; the label is the class's position in classes.")


def check_lazy_dataset(cls: Any, name: str = "LazyImages") -> None:
    """Fail unless ``cls(samples, transform)`` is a dataset that opens each file when it is indexed.

    The check's samples include a greyscale image (it must come out with three channels). A file is
    repainted after the dataset is built: a dataset that decoded every image in ``__init__`` still shows
    the old colour and fails.

    Used in: 01_data_loading.ipynb
    """
    import tempfile
    from pathlib import Path

    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"{i}.png" for i in range(3)]
        for path, mode in zip(paths, ("RGB", "L", "RGB")):
            Image.new(mode, (5, 4), color=(10, 20, 30) if mode == "RGB" else 90).save(path)
        samples = [(str(path), label) for path, label in zip(paths, (2, 0, 1))]
        dataset = check_implemented(cls, samples, TF.pil_to_tensor)
        check_equal(len(dataset) if hasattr(dataset, "__len__") else None, 3, f"len({name}(samples, ...))",
                    hint="__len__ returns len(self.samples).")
        Image.new("RGB", (5, 4), color=(200, 100, 0)).save(paths[2])  # repainted after the dataset was built
        items = [check_implemented(dataset.__getitem__, i) for i in range(3)]
    for i, item in enumerate(items):
        if not isinstance(item, tuple) or len(item) != 2 or not isinstance(item[0], torch.Tensor):
            raise CheckFailed(f"`{name}[{i}]` is {type(item).__name__}; return (transform(image), label), image first.")
    check_equal([int(label) for _, label in items], [2, 0, 1], f"labels of {name}", hint="Return the sample's label.")
    check_shape(items[1][0], (3, 4, 5), f"{name}[1] (a greyscale file)", hint="Convert every image to RGB.")
    if items[2][0][:, 0, 0].tolist() != [200, 100, 0]:
        raise CheckFailed(f"`{name}[2]` shows the picture as it was when the dataset was built: open the file in "
                          "__getitem__, not in __init__, so that the dataset stores paths, not pixels.")


def check_normalizes(transform: Any, *, mean: Sequence[float], std: Sequence[float], name: str,
                     size: int = 64) -> None:
    """Fail unless ``transform`` ends like the backbone expects: float pixels scaled to [0, 1], then normalised.

    Sends a black and a white ``uint8`` image through it: black must become ``(0 - mean) / std`` in every
    channel (a missing or wrong ``Normalize`` fails here), and no value may leave
    ``[(0 - mean) / std, (1 - mean) / std]`` (pixels not scaled to [0, 1] fail here). Random crops, flips,
    rotations and colour jitter keep a black image black, so a random pipeline passes when it ends right.

    Used in: 02_data_augmentation.ipynb
    """
    check_answered(transform, name)
    low = (0 - torch.tensor(mean, dtype=torch.float64)) / torch.tensor(std, dtype=torch.float64)
    high = (1 - torch.tensor(mean, dtype=torch.float64)) / torch.tensor(std, dtype=torch.float64)
    ending = f"End it with v2.ToDtype(torch.float32, scale=True) and v2.Normalize({list(mean)}, {list(std)})."
    outputs = {}
    for colour, value in (("black", 0), ("white", 255)):
        try:
            out = transform(torch.full((3, size, size), value, dtype=torch.uint8))
        except Exception as err:  # noqa: BLE001 - any failure of the student's pipeline is the message
            raise CheckFailed(f"`{name}` fails on a {colour} image: {type(err).__name__}: {err}. {ending}") from None
        if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.dim() != 3 or len(out) != 3:
            got = f"{out.dtype} tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise CheckFailed(f"`{name}` should return a float (3, H, W) tensor, got a {got}. {ending}")
        outputs[colour] = out.double()
    black = outputs["black"].mean(dim=(1, 2))
    if (black - low).abs().max() > 1e-3:
        raise CheckFailed(f"`{name}` turns a black image into {[round(v, 3) for v in black.tolist()]} per channel, "
                          f"expected (0 - mean) / std = {[round(v, 3) for v in low.tolist()]}. {ending}")
    top = outputs["white"].amax(dim=(1, 2))
    if (top > high + 1e-3).any():
        raise CheckFailed(f"`{name}` turns a white image into values up to {top.max().item():.3g}, expected at most "
                          f"(1 - mean) / std = {[round(v, 3) for v in high.tolist()]}. Scale the pixels to [0, 1] "
                          f"before normalising. {ending}")


@functools.lru_cache(maxsize=1)
def _ig_probe():
    """A small ReLU network, an image, and the IG miss of each candidate number of steps (computed once)."""
    from course_utils.inside.attribution import IG_STEP_CANDIDATES, attribute

    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    image = 2 * torch.randn(3, 12, 12)
    misses = {}
    for n_steps in IG_STEP_CANDIDATES:
        attr, delta = attribute(net, image, method="integrated_gradients", target=3, n_steps=n_steps,
                                return_delta=True)
        misses[n_steps] = abs(delta) / abs(attr.sum().item() - delta)
    return net, image, misses


def check_ig_steps(func: Callable, name: str = "choose_ig_steps") -> None:
    """Fail unless ``func(model, image, target, tolerance=...)`` returns ``(n_steps, miss)``: the fewest of
    ``IG_STEP_CANDIDATES`` whose Integrated Gradients miss ``|delta| / |f(image) - f(zeros)|`` is at most
    ``tolerance`` (the largest candidate when none is), and that candidate's miss.

    Probed on a small ReLU network whose miss does not shrink steadily with the steps, at two tolerances.

    Used in: 08_attribution_with_captum.ipynb
    """
    from course_utils.inside.attribution import IG_STEP_CANDIDATES

    net, image, misses = _ig_probe()
    for tolerance in (0.05, 0.3):
        passing = [n for n, miss in misses.items() if miss <= tolerance]
        expected = passing[0] if passing else IG_STEP_CANDIDATES[-1]
        answer = check_implemented(func, net, image, 3, tolerance=tolerance)
        call = f"{name}(..., tolerance={tolerance})"
        if not isinstance(answer, tuple) or len(answer) != 2:
            raise CheckFailed(f"`{call}` returned {answer!r}; return a pair (n_steps, miss).")
        check_equal(answer[0], expected, f"{call}[0]",
                    hint=f"The misses of the candidates are {({n: round(m, 3) for n, m in misses.items()})}: take "
                         "the fewest steps whose miss is at most the tolerance.")
        check_close(answer[1], misses[expected], f"{call}[1]", atol=1e-4,
                    hint="miss = |delta| / |f(image) - f(baseline)|, and f(image) - f(baseline) = sum - delta.")


def check_engine_choice(func: Callable, name: str = "choose_engine") -> None:
    """Fail unless ``func(runs_ms, budget_ms)`` picks, from ``{engine: [latency of each run in ms]}``, the
    engine whose 90th-percentile latency fits the budget (the lowest one when several do), or None.

    Used in: 10_deployment_and_scaling.ipynb
    """
    steady, spiky = [20.0] * 10, [10.0] * 8 + [90.0, 95.0]   # spiky: the better median, the worse tail
    cases = [({"steady": steady, "spiky": spiky}, 50.0, "steady",
              "Judge by the 90th percentile (np.percentile(runs, 90)), not the median: the slow runs are what "
              "a user waits for one time in ten."),
             ({"slow": [30.0] * 10, "fast": [12.0] * 10}, 50.0, "fast", "When several fit, take the fastest."),
             ({"steady": [60.0] * 10, "spiky": [10.0] * 8 + [50.0, 55.0]}, 100.0, "spiky",
              "Both fit: take the one with the lower 90th percentile."),
             ({"steady": steady, "spiky": spiky}, 15.0, None, "Return None when no engine fits the budget.")]
    for runs_ms, budget, expected, hint in cases:
        answer = check_implemented(func, runs_ms, budget)
        if answer != expected:
            raise CheckFailed(f"`{name}({runs_ms}, {budget})` is {answer!r}, expected {expected!r}. {hint}")


def _save_bfloat16_copy(onnx_path: Any, target: Any) -> None:
    """Save a broken copy of an ONNX model: every float32 weight rounded to bfloat16's 8 bits of precision."""
    import numpy as np
    import onnx

    broken = onnx.load(str(onnx_path))
    for tensor in broken.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT:
            bits = onnx.numpy_helper.to_array(tensor).astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
            tensor.CopyFrom(onnx.numpy_helper.from_array(bits.view(np.float32), tensor.name))
    onnx.save(broken, str(target))


def check_parity_check(
    func: Callable, tolerance: Any, onnx_path: Any, model: nn.Module, images: torch.Tensor,
    name: str = "parity_gap",
) -> None:
    """Fail unless ``func(session, model, images)`` measures the largest absolute logit difference between
    an ONNX Runtime session and ``model``, and ``tolerance`` accepts the export at ``onnx_path`` while
    rejecting a broken copy of it (every weight rounded to bfloat16's 8 bits of precision).

    Used in: 10_deployment_and_scaling.ipynb
    """
    import tempfile
    from pathlib import Path

    from course_utils import deploy

    check_answered(tolerance, "tolerance")
    with torch.inference_mode():
        expected_logits = model.eval()(images).float().cpu()
    with tempfile.TemporaryDirectory() as folder:
        _save_bfloat16_copy(onnx_path, Path(folder) / "broken.onnx")
        sessions = {"the float32 export": deploy.onnx_session(onnx_path),
                    "a broken export (weights rounded to bfloat16)": deploy.onnx_session(Path(folder) / "broken.onnx")}
        gaps = {}
        for label, session in sessions.items():
            gaps[label] = (deploy.run_onnx(session, images) - expected_logits).abs().max().item()
            check_close(check_implemented(func, session, model, images), gaps[label], f"{name} on {label}",
                        atol=0.1 * gaps[label] + 1e-6, hint="Return the largest absolute difference between "
                        "ONNX Runtime's logits and the model's, as a float.")
    good, bad = gaps.values()
    if not good <= tolerance:
        raise CheckFailed(f"`tolerance` = {tolerance!r} rejects the correct export (gap {good:.2g}): float32 rounding "
                          "differs between engines, so allow more than it.")
    if not tolerance < bad:
        raise CheckFailed(f"`tolerance` = {tolerance!r} accepts a broken export (gap {bad:.2g}): choose a tolerance "
                          "between the two gaps you measured.")


def check_onnx_export(
    path: Any, model: nn.Module, image_shape: Sequence[int], name: str = "onnx_path", *,
    batch_sizes: Sequence[int] = (1, 3), atol: float = 1e-4,
) -> None:
    """Fail unless ``path`` is an ONNX file with a dynamic batch dimension whose ONNX Runtime output
    matches ``model`` within ``atol`` for every batch size in ``batch_sizes``.

    Used in: no notebook (notebook 10's exercises check the parity and the engine instead); an instructor's
        check for an export exercise, tested in tests/test_deploy.py
    """
    from pathlib import Path

    from course_utils import deploy

    check_answered(path, name)
    if not Path(path).is_file():
        raise CheckFailed(f"`{name}` is {str(path)!r}, but there is no file there: save the export with "
                          "onnx_program.save(path).")
    session = deploy.onnx_session(path)
    batch = session.get_inputs()[0].shape[0]
    if isinstance(batch, int):
        raise CheckFailed(f"The ONNX model's batch dimension is fixed to {batch}: pass "
                          "dynamic_shapes=({0: torch.export.Dim('batch')},) to torch.onnx.export.")
    generator = torch.Generator().manual_seed(0)
    for size in batch_sizes:
        images = torch.randn(size, *image_shape, generator=generator)
        with torch.no_grad():
            expected = model.eval()(images)
        check_close(deploy.run_onnx(session, images), expected, f"ONNX Runtime's output for a batch of {size}",
                    atol=atol, hint="Export the same model, in eval mode, that you compare with.")
