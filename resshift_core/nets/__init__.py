"""Network definitions with the official ResShift parameter names."""

from .unet import ResShiftUNet, UNetConfig
from .vqgan import VQAutoencoder, VQConfig

__all__ = ["ResShiftUNet", "UNetConfig", "VQAutoencoder", "VQConfig"]
