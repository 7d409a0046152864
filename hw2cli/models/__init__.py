"""Networks only (no samplers, no I/O)."""

from hw2cli.models.context_unet import ContextUnet, ContextUnetEps
from hw2cli.models.digit_unet import DigitUNet, DigitUNetConfig

__all__ = ["ContextUnet", "ContextUnetEps", "DigitUNet", "DigitUNetConfig"]
