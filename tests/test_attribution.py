"""attribute() over Captum methods by name: exact answers on a linear model, shapes, and bad input."""
import re

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

from course_utils.inside import attribution

matplotlib.use("Agg")


@pytest.fixture
def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 5, 3)).eval()


def test_integrated_gradients_on_linear_model_is_input_times_weight(linear_model):
    image, baseline = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    attr, delta = attribution.attribute(linear_model, image, method="integrated_gradients", target=2,
                                        baselines=baseline, n_steps=8, return_delta=True)
    expected = (image - baseline) * linear_model[1].weight[2].detach().view(3, 4, 5)
    torch.testing.assert_close(attr, expected, atol=1e-5, rtol=1e-4)
    assert abs(delta) < 1e-4  # completeness holds exactly for a linear model


def test_saliency_is_absolute_input_gradient(tiny_cnn):
    tiny_cnn.eval()
    image = torch.randn(3, 9, 11)
    leaf = image.clone().requires_grad_(True)
    tiny_cnn(leaf.unsqueeze(0))[0, 4].backward()
    attr = attribution.attribute(tiny_cnn, image, method="saliency", target=4)
    torch.testing.assert_close(attr, leaf.grad.abs())


def test_grad_cam_is_upsampled_to_the_image_size(tiny_cnn):
    tiny_cnn.eval()
    image = torch.randn(3, 20, 26)
    cam = attribution.attribute(tiny_cnn, image, method="grad_cam", target=1, layer=tiny_cnn[3])
    assert cam.shape == (1, 20, 26)
    assert (cam >= 0).all()  # ReLU'd, as in the Grad-CAM paper
    by_name = attribution.attribute(tiny_cnn, image, method="grad_cam", target=1, layer="3")
    torch.testing.assert_close(cam, by_name)


@pytest.mark.parametrize("method, kwargs", [
    ("smoothgrad", {"nt_samples": 3}),
    ("smoothgrad", {"base": "integrated_gradients", "nt_samples": 2, "n_steps": 4}),
    ("gradient_shap", {"n_samples": 3}),
    ("occlusion", {"window": 4, "stride": 4}),
])
def test_other_methods_return_the_image_shape(tiny_cnn, method, kwargs):
    tiny_cnn.eval()
    image = torch.randn(3, 12, 16)
    attr = attribution.attribute(tiny_cnn, image, method=method, target=3, **kwargs)
    assert attr.shape == image.shape and torch.isfinite(attr).all()


def test_occlusion_of_an_irrelevant_region_scores_zero(linear_model):
    with torch.no_grad():
        linear_model[1].weight.view(3, 3, 4, 5)[:, :, :, 3:] = 0  # columns 3-4 never matter
    attr = attribution.attribute(linear_model, torch.randn(3, 4, 5), method="occlusion", target=0,
                                 window=1, stride=1)
    assert attr[:, :, 3:].abs().max() == 0 and attr[:, :, :3].abs().max() > 0


def test_unknown_method_lists_the_valid_names(tiny_cnn):
    tiny_cnn.eval()
    with pytest.raises(ValueError, match="'lime'.*saliency, integrated_gradients, smoothgrad, "
                                         "gradient_shap, occlusion, grad_cam"):
        attribution.attribute(tiny_cnn, torch.randn(3, 8, 8), method="lime", target=0)


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (8, 8)])
def test_rejects_non_chw_inputs(tiny_cnn, shape):
    tiny_cnn.eval()
    with pytest.raises(ValueError, match=r"one \(C, H, W\) image"):
        attribution.attribute(tiny_cnn, torch.randn(shape), method="saliency", target=0)


def test_rejects_train_mode_missing_layer_and_misplaced_delta(tiny_cnn):
    image = torch.randn(3, 8, 8)
    with pytest.raises(ValueError, match="model.eval()"):
        attribution.attribute(tiny_cnn, image, method="saliency", target=0)
    tiny_cnn.eval()
    with pytest.raises(ValueError, match="grad_cam needs layer"):
        attribution.attribute(tiny_cnn, image, method="grad_cam", target=0)
    with pytest.raises(ValueError, match="No layer 'conv9'"):
        attribution.attribute(tiny_cnn, image, method="grad_cam", target=0, layer="conv9")
    with pytest.raises(ValueError, match="return_delta=True works only"):
        attribution.attribute(tiny_cnn, image, method="saliency", target=0, return_delta=True)


@pytest.mark.parametrize("kwargs, message", [
    ({"window": 0}, "occlusion window must be a positive integer such as 16, got 0. It is a length in pixels"),
    ({"stride": True}, "occlusion stride must be a positive integer such as 16, got True."),
])
def test_occlusion_rejects_a_window_or_stride_that_is_not_a_pixel_count(tiny_cnn, kwargs, message):
    tiny_cnn.eval()
    with pytest.raises(ValueError, match=re.escape(message)):
        attribution.attribute(tiny_cnn, torch.randn(3, 8, 8), method="occlusion", target=0, **kwargs)


def test_overlay_attribution_draws_image_and_heat_map():
    import matplotlib.pyplot as plt

    image, attr = torch.randn(3, 10, 12), torch.randn(3, 10, 12)
    ax = attribution.overlay_attribution(image, attr, mean=(0.5,) * 3, std=(0.5,) * 3, title="IG")
    assert ax.get_title() == "IG" and len(ax.images) == 2
    ax = attribution.overlay_attribution(image, attr[:1], mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(ValueError, match="upsample it first"):
        attribution.overlay_attribution(image, torch.randn(1, 5, 6), mean=(0.5,) * 3, std=(0.5,) * 3)
    plt.close("all")


def test_overlay_signed_attribution_colours_evidence_by_sign():
    import matplotlib.pyplot as plt

    image, attr = torch.randn(3, 10, 12), torch.zeros(3, 10, 12)
    attr[:, :5, :4] = 1.0    # evidence for the target: red, opaque
    attr[:, 5:, 8:] = -1.0   # evidence against: blue, opaque
    ax = attribution.overlay_signed_attribution(image, attr, mean=(0.5,) * 3, std=(0.5,) * 3, title="IG")
    assert ax.get_title() == "IG" and len(ax.images) == 2 and len(ax.figure.axes) == 2  # image, map, colour bar
    rgba = np.asarray(ax.images[1].get_array())
    red, blue, nothing = rgba[0, 0], rgba[9, 11], rgba[0, 11]
    assert red[0] > red[2] and red[3] == 1 and blue[2] > blue[0] and blue[3] == 1
    assert nothing[3] == 0  # no evidence: the grey image shows through
    labels = [t.get_text() for t in ax.figure.axes[1].get_yticklabels()]
    assert labels == ["against", "0", "for"]
    bare = attribution.overlay_signed_attribution(image, attr[0], mean=(0.5,) * 3, std=(0.5,) * 3, colorbar=False)
    assert len(bare.figure.axes) == 1
    with pytest.raises(ValueError, match="upsample it first"):
        attribution.overlay_signed_attribution(image, torch.randn(1, 5, 6), mean=(0.5,) * 3, std=(0.5,) * 3)
    plt.close("all")


@pytest.mark.parametrize("method, kwargs", [("saliency", {}), ("grad_cam", {"layer": "3"}),
                                            ("integrated_gradients", {"n_steps": 4})])
def test_maps_come_back_detached_on_the_image_device(tiny_cnn, method, kwargs):
    """Plain tensors a plot or scipy can read (``.numpy()``), on the device the image came from."""
    image = torch.randn(3, 12, 12)
    result = attribution.attribute(tiny_cnn.eval(), image, method=method, target=4, **kwargs)
    assert not result.requires_grad and result.device == image.device
    result.numpy()
