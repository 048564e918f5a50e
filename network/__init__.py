"""Networks of the pipeline. Helpers shared by the ResNet-38 and VGG-16 nets live here."""
from torch import nn


def scaled(channels, width):
    """A channel count multiplied by the width factor (1.0 keeps the reference sizes)."""
    if width <= 0:
        raise ValueError(f'width must be positive, got {width}')
    return max(1, int(round(channels * width)))


def freeze_pretrained(model):
    """What the reference's train() enforces: every BatchNorm in eval mode with frozen affine
    parameters, and every layer listed in `model.not_training` frozen."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
            m.requires_grad_(False)
    for layer in model.not_training:
        layer.requires_grad_(False)


def parameter_groups(model):
    """Four lists for PolyOptimizer: pretrained weights, pretrained biases, from-scratch weights,
    from-scratch biases. Only Conv2d and GroupNorm parameters that require grad, as the reference
    (so the VGG affinity net's GroupNorm layers count as pretrained, also as the reference)."""
    groups = ([], [], [], [])
    for m in model.modules():
        if not isinstance(m, (nn.Conv2d, nn.GroupNorm)):
            continue
        scratch = 2 if any(m is layer for layer in model.from_scratch_layers) else 0
        if m.weight is not None and m.weight.requires_grad:
            groups[scratch].append(m.weight)
        if m.bias is not None and m.bias.requires_grad:
            groups[scratch + 1].append(m.bias)
    return groups
