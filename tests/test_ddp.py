"""Notebook 10's DDP script (its `%%writefile` cell), run for real: two processes started by torchrun take
the steps of one process on the whole global batch and stay in sync; the image-folder path writes a model
that checkpoints.load rebuilds."""
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from course_utils import train
from course_utils.models import checkpoints

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "10_deployment_and_scaling.ipynb"
LR, WEIGHT_DECAY, EPOCHS, BATCH = 0.05, 0.01, 2, 4


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    """The script exactly as notebook 10 writes it: the body of its `%%writefile` cell."""
    cells = [c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells
             if c.cell_type == "code" and c.source.startswith("%%writefile")]
    assert len(cells) == 1, "notebook 10 should write exactly one script with %%writefile"
    path = tmp_path_factory.mktemp("script") / "ddp_train.py"
    path.write_text(cells[0].split("\n", 1)[1])
    return path


@pytest.fixture(scope="module")
def module(script):
    spec = importlib.util.spec_from_file_location("ddp_train", script)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


@pytest.fixture(scope="module")
def two_process_run(script, tmp_path_factory):
    """Two epochs of the tiny model on two CPU processes: 8 of the 16 training images each, 2 steps per epoch."""
    folder = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               "--tiny", "--cpu", "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--lr", str(LR),
               "--weight-decay", str(WEIGHT_DECAY), "--output", str(folder / "tiny.pt")]
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, folder


def one_process_reference(module):
    """The same training in one process: each step on the union of both ranks' batches (the global batch)."""
    model, train_set, _ = module.tiny_problem(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.requires_grad_(False)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS)
    images, labels = train_set.tensors
    losses = []
    for epoch in range(1, EPOCHS + 1):
        shards = []
        for rank in (0, 1):
            sampler = DistributedSampler(train_set, num_replicas=2, rank=rank, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        steps = [[i for shard in shards for i in shard[s:s + BATCH]] for s in range(0, len(shards[0]), BATCH)]
        batches = [(images[idx], labels[idx]) for idx in steps]
        losses.append(train.train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, batches, "cpu",
                                            progress=False)["loss"])
        scheduler.step()
    return model.state_dict(), initial, losses


def test_two_processes_take_the_steps_of_one_process_on_the_global_batch(two_process_run, module):
    _, folder = two_process_run
    saved = checkpoints.load(folder / "tiny.pt", into=module.tiny_problem(1)[0])
    weights = saved.model.state_dict()
    expected, initial, losses = one_process_reference(module)
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor, atol=1e-5, rtol=1e-4, msg=name)
    for name in ("0.weight", "1.weight", "1.running_mean", "4.running_var"):  # frozen conv and BatchNorms
        assert torch.equal(weights[name], initial[name]), f"frozen {name} changed"
    assert not torch.equal(weights["8.weight"], initial["8.weight"]), "the head must have trained"
    # The printed training loss is the mean over both processes' images, as one process would compute it.
    assert [h["train_loss"] for h in saved.info["history"]] == pytest.approx(losses, rel=1e-5)


def test_processes_stay_in_sync_and_rank_zero_writes_one_checkpoint(two_process_run, module):
    result, folder = two_process_run
    assert "largest weight difference between the processes: 0.0e+00" in result.stdout
    assert "2 processes (gloo), 8 training images and 4 per step each, 8 per step in all" in result.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["tiny.pt"]  # no temporary or per-rank files
    saved = checkpoints.load(folder / "tiny.pt", into=module.tiny_problem(1)[0])
    assert [h["epoch"] for h in saved.info["history"]] == [1, 2]
    assert saved.info["val_acc"] == saved.info["history"][-1]["val_acc"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_image_folder_path_in_one_process_saves_a_loadable_model(module, tiny_dataset, tmp_path, monkeypatch):
    """The real (non-tiny) path as one process of one: backbone, image folders, checkpoints.save."""
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(key, value)
    output = tmp_path / "model.pt"
    history = module.main(["--cpu", "--data", str(tiny_dataset), "--epochs", "1", "--batch-size", "6",
                           "--train-stages", "1", "--output", str(output)])
    loaded = checkpoints.load(output)
    assert loaded.classes == ["cats", "dogs", "owls"]
    assert loaded.info["history"] == history and loaded.info["val_acc"] == history[-1]["val_acc"]
    assert loaded.model(torch.randn(2, 3, 64, 64)).shape == (2, 3)
