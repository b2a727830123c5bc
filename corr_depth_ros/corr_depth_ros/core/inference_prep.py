"""Turning a trained network into its fast inference form, shared by the three models.

- Batch norm folded into the convolution before it (in eval mode BN is a per-channel affine
  map, so conv then BN is one convolution with rescaled weights and a bias): same output, one
  pass less over every feature map.
- Weights in channels-last (NHWC) layout, the layout oneDNN's CPU convolutions run natively;
  with NCHW weights or activations every convolution reorders its operands first. The
  networks put their activations in channels-last where convolutions follow and back into
  NCHW before element-wise stages that are faster there (measured per network).
"""
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

CHANNELS_LAST = torch.channels_last


@torch.no_grad()
def fuse_batch_norm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d or ConvTranspose2d inside an
    ``nn.Sequential`` into that convolution (in place; the BN becomes ``nn.Identity``).
    For inference only: returns the model in eval mode."""
    model.eval()
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and \
                    isinstance(norm, nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(conv, norm,
                                              transpose=isinstance(conv, nn.ConvTranspose2d))
                module[i + 1] = nn.Identity()
    return model


def prepare_for_inference(model: nn.Module, device='cpu', fuse: bool = True) -> nn.Module:
    """``model`` in eval mode on ``device``, batch norm folded (``fuse``), weights
    channels-last. The result is for inference only."""
    if fuse:
        fuse_batch_norm(model)
    return model.to(device).to(memory_format=CHANNELS_LAST).eval()
