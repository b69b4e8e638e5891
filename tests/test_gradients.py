"""Gradient norms, activation capture with hooks that always go away, saved-tensor accounting, plots."""
import math

import matplotlib
import pytest
import torch
from torch import nn

from course_utils.inside import gradients, network_plots

matplotlib.use("Agg")


def _backward(model: nn.Module, classes: int = 5, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(4, 3, 12, 12, generator=generator)
    targets = torch.randint(0, classes, (4,), generator=generator)
    nn.functional.cross_entropy(model(images), targets).backward()


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_gradient_norms_match_pytorch(tiny_cnn):
    _backward(tiny_cnn)
    norms = gradients.gradient_norms(tiny_cnn)
    assert list(norms) == [n for n, _ in tiny_cnn.named_parameters()]
    for name, parameter in tiny_cnn.named_parameters():
        assert norms[name] == pytest.approx(torch.linalg.vector_norm(parameter.grad).item(), rel=1e-5)


def test_grouped_and_relative_norms_combine_parameters(tiny_cnn):
    _backward(tiny_cnn)
    grouped = gradients.gradient_norms(tiny_cnn, groups=["0", "8"])
    assert list(grouped) == ["0", "8"]  # parameters under no group are left out
    conv = tiny_cnn[0]
    expected = math.sqrt(conv.weight.grad.pow(2).sum().item() + conv.bias.grad.pow(2).sum().item())
    assert grouped["0"] == pytest.approx(expected, rel=1e-5)
    relative = gradients.gradient_norms(tiny_cnn, groups=["8"], relative=True)
    head = tiny_cnn[8]
    weight_norm = math.sqrt(head.weight.pow(2).sum().item() + head.bias.pow(2).sum().item())
    assert relative["8"] == pytest.approx(grouped["8"] / weight_norm, rel=1e-5)


def test_frozen_parameters_have_no_grad_and_norm_none(tiny_cnn):
    for parameter in tiny_cnn[:3].parameters():
        parameter.requires_grad_(False)
    _backward(tiny_cnn)
    frozen = [n for n, p in tiny_cnn.named_parameters() if not p.requires_grad]
    assert frozen and all(tiny_cnn.get_parameter(n).grad is None for n in frozen)
    norms = gradients.gradient_norms(tiny_cnn, groups=["0", "1", "3", "8"])
    assert norms["0"] is None and norms["1"] is None
    assert norms["3"] > 0 and norms["8"] > 0


def test_unknown_group_lists_valid_names(tiny_cnn):
    with pytest.raises(ValueError, match=r"'conv9'.*Valid names: 0, 1, 3, 4, 8"):
        gradients.gradient_norms(tiny_cnn, groups=["conv9"])


def test_record_gradient_norms_steps_and_updates(tiny_cnn):
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 12, 12, generator=generator), torch.tensor([0, 1, 2, 4]))]
    for parameter in tiny_cnn[0].parameters():
        parameter.requires_grad_(False)
    before = tiny_cnn[8].weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in tiny_cnn.parameters() if p.requires_grad], lr=0.1)
    history = gradients.record_gradient_norms(tiny_cnn, batches, steps=3, criterion=nn.CrossEntropyLoss(),
                                              optimizer=optimizer, groups=["0", "8"])
    assert [row.step for row in history] == [0, 1, 2]  # one batch, cycled
    assert all(row.norms["0"] is None and row.norms["8"] > 0 for row in history)
    assert history[-1].loss < history[0].loss
    assert not torch.equal(before, tiny_cnn[8].weight)


def test_record_gradient_norms_without_optimizer_keeps_weights(tiny_cnn):
    batches = [(torch.randn(2, 3, 12, 12), torch.tensor([3, 4]))]
    before = {k: v.detach().clone() for k, v in tiny_cnn.named_parameters()}
    history = gradients.record_gradient_norms(tiny_cnn, batches, steps=2, criterion=nn.CrossEntropyLoss())
    assert all(torch.equal(value, tiny_cnn.get_parameter(key)) for key, value in before.items())
    assert history[0].norms == pytest.approx(history[1].norms, rel=1e-6)  # same batch, same weights


def test_record_gradient_norms_amp_is_ignored_off_cuda(tiny_cnn):
    import copy

    batches = [(torch.randn(2, 3, 12, 12), torch.tensor([3, 4]))]
    twin = copy.deepcopy(tiny_cnn)
    plain = gradients.record_gradient_norms(tiny_cnn, batches, steps=1, criterion=nn.CrossEntropyLoss())
    mixed = gradients.record_gradient_norms(twin, batches, steps=1, criterion=nn.CrossEntropyLoss(), amp=True)
    assert mixed[0] == plain[0]


@pytest.mark.parametrize("steps", [0, 1.5, True])
def test_record_gradient_norms_rejects_bad_steps(tiny_cnn, steps):
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        gradients.record_gradient_norms(tiny_cnn, [], steps=steps, criterion=nn.CrossEntropyLoss())


def test_record_gradient_norms_rejects_empty_batches(tiny_cnn):
    with pytest.raises(ValueError, match="no batch"):
        gradients.record_gradient_norms(tiny_cnn, [], steps=1, criterion=nn.CrossEntropyLoss())


def test_grad_bytes_counts_only_existing_grads():
    model = nn.Sequential(nn.Linear(10, 5), nn.Linear(5, 3))
    assert gradients.grad_bytes(model) == 0
    model[0].requires_grad_(False)
    model(torch.randn(2, 10)).sum().backward()
    assert gradients.grad_bytes(model) == (5 * 3 + 3) * 4


def test_track_saved_tensors_sees_fewer_bytes_when_frozen(tiny_cnn):
    images = torch.randn(2, 3, 16, 16)
    with gradients.track_saved_tensors() as full:
        tiny_cnn(images).sum()
    tiny_cnn.requires_grad_(False)
    tiny_cnn[8].requires_grad_(True)
    with gradients.track_saved_tensors() as head_only:
        tiny_cnn(images).sum()
    assert full.bytes > head_only.bytes > 0
    assert head_only.count >= 1
    # the head saves its 16-dimensional input (and its weight): a few hundred bytes at most
    assert head_only.bytes <= (2 * 16 + 16 * 5) * 4


def test_capture_activations_records_outputs_and_removes_hooks(tiny_cnn):
    tiny_cnn.eval()
    with gradients.capture_activations(tiny_cnn, ["0", "5"]) as acts:
        logits = tiny_cnn(torch.randn(2, 3, 10, 10))
        assert _hook_count(tiny_cnn) == 2
    assert _hook_count(tiny_cnn) == 0
    assert acts["0"].shape == (2, 8, 10, 10) and acts["5"].shape == (2, 16, 5, 5)
    assert not acts["0"].requires_grad and logits.shape == (2, 5)


def test_capture_activations_removes_hooks_when_forward_raises(tiny_cnn):
    with pytest.raises(RuntimeError):
        with gradients.capture_activations(tiny_cnn, ["0", "3"]):
            tiny_cnn(torch.randn(1, 4, 8, 8))  # 4 channels: the first conv raises
    assert _hook_count(tiny_cnn) == 0


def test_capture_activations_unknown_name_lists_valid_names(tiny_cnn):
    with pytest.raises(ValueError, match=r"\['blocks.9'\].*Valid names: 0, 1, 2, 3"):
        with gradients.capture_activations(tiny_cnn, ["0", "blocks.9"]):
            pass
    assert _hook_count(tiny_cnn) == 0


def test_plots_have_titles_labels_and_log_scale(tiny_cnn):
    import matplotlib.pyplot as plt

    ax = network_plots.plot_gradient_norms({"a": 1.0, "b": None, "c": 0.01}, label="run")
    assert ax.get_yscale() == "log" and ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    fig = network_plots.plot_feature_maps(torch.rand(5, 6, 6), count=4, ncols=2)
    assert fig._suptitle.get_text().startswith("Feature maps")
    fig2 = network_plots.plot_filters(tiny_cnn[0].weight, count=8, ncols=4, titles=list("abcdefgh"))
    assert fig2.axes[0].get_title() == "a"
    with pytest.raises(ValueError, match="one title per filter"):
        network_plots.plot_filters(tiny_cnn[0].weight, count=8, titles=["x"])
    with pytest.raises(ValueError, match="norms is empty"):
        network_plots.plot_gradient_norms({})
    plt.close("all")


def test_nested_groups_give_each_parameter_to_the_longest_name():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4)), nn.Linear(4, 5))
    nn.functional.cross_entropy(model(torch.randn(6, 3)), torch.arange(6) % 5).backward()

    def norm(*modules):
        return math.sqrt(sum(p.grad.pow(2).sum().item() for m in modules for p in m.parameters()))

    for groups in (["0", "0.1", "1"], ["0.1", "1", "0"]):  # the order of the names must not matter
        norms = gradients.gradient_norms(model, groups=groups)
        assert norms["0.1"] == pytest.approx(norm(model[0][1]), rel=1e-6)
        assert norms["0"] == pytest.approx(norm(model[0][0]), rel=1e-6), "0.1's parameters are not counted twice"
        assert norms["1"] == pytest.approx(norm(model[1]), rel=1e-6)


def test_record_gradient_norms_match_a_plain_pytorch_loop(tiny_cnn):
    import copy

    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, 12, 12, generator=generator), torch.tensor([0, 1, 2, 4])),
               (torch.randn(4, 3, 12, 12, generator=generator), torch.tensor([3, 3, 1, 0]))]
    reference = copy.deepcopy(tiny_cnn)
    history = gradients.record_gradient_norms(tiny_cnn, batches, steps=3, criterion=nn.CrossEntropyLoss(),
                                              optimizer=torch.optim.SGD(tiny_cnn.parameters(), lr=0.1),
                                              groups=["0", "3", "8"])
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    reference.train()
    for step in range(3):
        images, targets = batches[step % 2]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(reference(images), targets)
        loss.backward()
        expected = {g: torch.cat([p.grad.flatten() for p in reference.get_submodule(g).parameters()]).norm().item()
                    for g in ["0", "3", "8"]}
        optimizer.step()
        assert history[step].step == step and history[step].loss == pytest.approx(loss.item(), rel=1e-5)
        assert history[step].norms == pytest.approx(expected, rel=1e-5)


def test_record_gradient_norms_leaves_the_global_random_state_alone(tiny_cnn):
    batches = [(torch.randn(3, 3, 12, 12), torch.tensor([0, 1, 4]))]
    state = torch.get_rng_state()
    gradients.record_gradient_norms(tiny_cnn, batches, steps=2, criterion=nn.CrossEntropyLoss(),
                                    optimizer=torch.optim.SGD(tiny_cnn.parameters(), lr=0.1))
    assert torch.equal(torch.get_rng_state(), state)
