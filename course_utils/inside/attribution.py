"""Which pixels made the model say "bee"? Captum's attribution methods behind one function, and a plot.

:func:`attribute` takes and returns single CHW images, so the methods can be swapped by name:
``attribute(model, image, method="integrated_gradients", target=label)``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_utils.arguments import require_int

METHODS = ("saliency", "integrated_gradients", "smoothgrad", "gradient_shap", "occlusion", "grad_cam")
IG_STEP_CANDIDATES = (4, 8, 16, 32, 64)  # numbers of Integrated Gradients steps notebook 08's exercise 2 chooses from


def attribute(
    model: nn.Module, inputs: torch.Tensor, *, method: str, target: int,
    baselines: torch.Tensor | float | None = None, return_delta: bool = False, **kwargs,
):
    """Attribution map of one image for the logit of class ``target``, by a Captum method's name.

    Methods and their extra keyword arguments (all others go to Captum's ``attribute``):

    - ``"saliency"``: absolute input gradient (``abs=True``).
    - ``"integrated_gradients"``: ``n_steps`` (default 50), ``internal_batch_size``; baseline default 0.
    - ``"smoothgrad"``: NoiseTunnel over ``base="saliency"`` or ``"integrated_gradients"``;
      ``nt_samples`` (default 10), ``stdevs`` (default 0.15), ``nt_samples_batch_size``.
    - ``"gradient_shap"``: ``n_samples`` (default 10), ``stdevs``; ``baselines`` is a CHW image or an
      ``(K, C, H, W)`` batch of them (default: two constant images at the input's min and max value).
    - ``"occlusion"``: ``window`` (default 32 px), ``stride`` (default 16 px),
      ``perturbations_per_eval``; occluded pixels get ``baselines`` (default 0).
    - ``"grad_cam"``: ``layer`` (a module or its dotted name, required); the map is upsampled
      bilinearly to the image size and returned as ``(1, H, W)``.

    The model must be in eval mode (BatchNorm would otherwise use the statistics of the perturbed batch).
    The image is moved to the model's device (e.g. a GPU) and the map comes back on the image's device.

    Args:
        model: A classifier returning logits ``(N, classes)``.
        inputs: One normalised image ``(C, H, W)``.
        method: One of ``METHODS``.
        target: Class index whose logit is explained.
        baselines: Reference input(s) where the method uses one (IG, GradientShap, Occlusion).
        return_delta: Integrated Gradients only: also return the convergence delta, i.e.
            ``sum(attributions) - (f(inputs) - f(baseline))``.
        **kwargs: Method options listed above.

    Returns:
        The attribution ``(C, H, W)`` (``(1, H, W)`` for Grad-CAM), or ``(attribution, delta)``.

    Raises:
        ValueError: Unknown method, missing ``layer``, ``inputs`` not CHW, or the model in train mode.

    Used in: 08_attribution_with_captum.ipynb
    """
    _check_arguments(model, inputs, method, return_delta)
    device = next((p.device for p in model.parameters()), inputs.device)
    x = inputs.detach().unsqueeze(0).to(device, memory_format=torch.channels_last).requires_grad_(True)
    base = _as_batch(baselines, x)
    if method == "integrated_gradients":
        result = _integrated_gradients(model, x, target, base, return_delta, kwargs)
        ig, delta = result if return_delta else (result, None)
        ig = ig[0].detach().to(inputs.device)
        return (ig, delta.item()) if return_delta else ig
    return _attribute_other(model, x, target, base, method, kwargs)[0].detach().to(inputs.device)


def _attribute_other(model, x, target, base, method, kwargs):
    if method == "saliency":
        from captum.attr import Saliency

        kwargs.setdefault("abs", True)
        return Saliency(model).attribute(x, target=target, **kwargs)
    if method == "smoothgrad":
        return _smoothgrad(model, x, target, base, kwargs)
    if method == "gradient_shap":
        from captum.attr import GradientShap

        if base is None:
            base = torch.stack([torch.full_like(x[0], x.min().item()), torch.full_like(x[0], x.max().item())])
        kwargs.setdefault("n_samples", 10)
        return GradientShap(model).attribute(x, baselines=base, target=target, **kwargs)
    if method == "occlusion":
        return _occlusion(model, x, target, base, kwargs)
    return _grad_cam(model, x, target, kwargs)


def _check_arguments(model: nn.Module, inputs: torch.Tensor, method: str, return_delta: bool) -> None:
    if method not in METHODS:
        raise ValueError(f"Unknown attribution method {method!r}. Choose one of: {', '.join(METHODS)}.")
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 3:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"inputs must be one (C, H, W) image tensor, got {shape}. For a batch, pass images[i].")
    if model.training:
        raise ValueError("The model is in train mode; call model.eval() before computing attributions.")
    if return_delta and method != "integrated_gradients":
        raise ValueError(f"return_delta=True works only with method='integrated_gradients', not {method!r}.")


def _as_batch(baselines, x: torch.Tensor):
    if isinstance(baselines, torch.Tensor):
        baselines = baselines.detach().to(x.device, x.dtype)
        return baselines.unsqueeze(0) if baselines.dim() == x.dim() - 1 else baselines
    return baselines


def _integrated_gradients(model, x, target, base, return_delta, kwargs):
    from captum.attr import IntegratedGradients

    kwargs.setdefault("n_steps", 50)
    return IntegratedGradients(model).attribute(
        x, baselines=base, target=target, return_convergence_delta=return_delta, **kwargs)


def _smoothgrad(model, x, target, base, kwargs):
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    inner = kwargs.pop("base", "saliency")
    if inner not in ("saliency", "integrated_gradients"):
        raise ValueError(f"smoothgrad base must be 'saliency' or 'integrated_gradients', got {inner!r}.")
    kwargs.setdefault("nt_samples", 10)
    kwargs.setdefault("stdevs", 0.15)
    if inner == "saliency":
        kwargs.setdefault("abs", True)
        return NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", target=target, **kwargs)
    kwargs.setdefault("n_steps", 20)
    return NoiseTunnel(IntegratedGradients(model)).attribute(
        x, nt_type="smoothgrad", target=target, baselines=base, **kwargs)


def _occlusion(model, x, target, base, kwargs):
    from captum.attr import Occlusion

    window, stride = kwargs.pop("window", 32), kwargs.pop("stride", 16)
    for label, value in (("window", window), ("stride", stride)):
        require_int(f"occlusion {label}", value, example=16, fix="It is a length in pixels (window: the side of "
                    "the square set to the baseline; stride: how far the square moves each time).")
    channels = x.shape[1]
    return Occlusion(model).attribute(
        x, sliding_window_shapes=(channels, window, window), strides=(channels, stride, stride),
        baselines=0.0 if base is None else base, target=target, **kwargs)


def _grad_cam(model, x, target, kwargs):
    from captum.attr import LayerGradCam

    layer = kwargs.pop("layer", None)
    if isinstance(layer, str):
        modules = dict(model.named_modules())
        if layer not in modules:
            raise ValueError(f"No layer {layer!r} in {type(model).__name__}; use a name from "
                             "model.named_modules(), e.g. the last convolutional block.")
        layer = modules[layer]
    if not isinstance(layer, nn.Module):
        raise ValueError("grad_cam needs layer=<module or its dotted name>, e.g. layer=model.conv_head "
                         f"(the last convolutional layer works best); got {layer!r}.")
    kwargs.setdefault("relu_attributions", True)
    cam = LayerGradCam(model, layer).attribute(x, target=target, **kwargs)
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)


def overlay_attribution(
    image: torch.Tensor, attribution: torch.Tensor, *, mean: Sequence[float], std: Sequence[float],
    title: str | None = None, alpha: float = 0.55, cmap: str = "inferno", ax=None,
):
    """Draw the denormalised image with the attribution's magnitude on top as a heat map.

    The map is ``|attribution|`` summed over channels, scaled by its 99th percentile and clipped to
    [0, 1], so one extreme pixel does not wash out the rest.

    Args:
        image: The normalised ``(3, H, W)`` image the model saw.
        attribution: ``(C, H, W)`` or ``(H, W)`` map from :func:`attribute`, same H and W.
        mean, std: The backbone's normalisation (``preprocessing.mean`` / ``.std``).
        title: Text above the panel.
        alpha: Opacity of the heat map.
        cmap: Matplotlib colour map of the heat map.

    Returns:
        The axes (from :func:`plotting.show_image`) with the heat map on top.

    Raises:
        ValueError: ``image`` is not ``(3, H, W)``, or the map's H and W differ from the image's.

    Used in: 08_attribution_with_captum.ipynb
    """
    from course_utils.plotting import show_image

    heat = _channel_sum(image, attribution, signed=False)
    heat = (heat / torch.quantile(heat.flatten(), 0.99).clamp_min(1e-12)).clamp(0, 1)
    ax = show_image(image, mean=mean, std=std, title=title, ax=ax)
    ax.imshow(heat.numpy(), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
    return ax


def _channel_sum(image: torch.Tensor, attribution: torch.Tensor, *, signed: bool) -> torch.Tensor:
    """The (H, W) map to draw: the attribution summed over channels (of its absolute value unless signed)."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be one (3, H, W) tensor, got shape {tuple(image.shape)}.")
    heat = attribution.detach().float().cpu()
    heat = heat if signed else heat.abs()
    heat = heat.sum(0) if heat.dim() == 3 else heat
    if heat.shape != image.shape[1:]:
        raise ValueError(f"attribution is {tuple(heat.shape)} px but the image is {tuple(image.shape[1:])} px; "
                         "upsample it first (attribute(..., method='grad_cam') already does).")
    return heat


def overlay_signed_attribution(
    image: torch.Tensor, attribution: torch.Tensor, *, mean: Sequence[float], std: Sequence[float],
    title: str | None = None, cmap: str = "RdBu_r", colorbar: bool = True, ax=None,
):
    """Draw evidence for the target in red and against it in blue over a grey copy of the image.

    The map is the attribution summed over channels *with its sign*, divided by the 99th percentile of
    its absolute value and clipped to [-1, 1]; the colour scale is centred at 0. The opacity grows with
    the absolute value, so where there is no evidence either way the image shows through.

    Args:
        attribution: ``(C, H, W)`` or ``(H, W)`` signed map (Integrated Gradients, Occlusion, GradientShap,
            Grad-CAM with ``relu_attributions=False``), same H and W as the image.
        image, mean, std, title: As in :func:`overlay_attribution`.
        cmap: A diverging Matplotlib colour map (its middle colour stands for 0).
        colorbar: Add a colour bar from "against" (-1) through 0 to "for" (+1).

    Returns:
        The axes; the colour bar, if any, is a second axes of the same figure.

    Raises:
        ValueError: As :func:`overlay_attribution`.

    Used in: 08_attribution_with_captum.ipynb
    """
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from course_utils.data import denormalize
    from course_utils.plotting import new_axes

    heat = _channel_sum(image, attribution, signed=True)
    heat = (heat / torch.quantile(heat.abs().flatten(), 0.99).clamp_min(1e-12)).clamp(-1, 1)
    ax = new_axes(ax, figsize=(3.4, 3))
    grey = denormalize(image.detach().float().cpu(), mean, std).clamp(0, 1).mean(0)
    ax.imshow(grey.numpy(), cmap="gray", vmin=0, vmax=1)
    norm, colours = Normalize(vmin=-1, vmax=1), plt.get_cmap(cmap)
    rgba = colours(norm(heat.numpy()))
    rgba[..., 3] = heat.abs().numpy() ** 0.5  # opaque where the evidence is strong
    ax.imshow(rgba)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        bar = ax.figure.colorbar(ScalarMappable(norm=norm, cmap=colours), ax=ax, ticks=[-1, 0, 1],
                                 fraction=0.046, pad=0.03)
        bar.ax.set_yticklabels(["against", "0", "for"], fontsize=7)
    return ax
