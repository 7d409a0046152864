"""Networks only (no samplers, no I/O)."""

from hw2cli.models.context_unet import ContextUnet, ContextUnetEps
from hw2cli.models.digit_unet import DigitUNet, DigitUNetConfig
from hw2cli.models.face_unet import FaceUNet

__all__ = ["ContextUnet", "ContextUnetEps", "DigitUNet", "DigitUNetConfig", "FaceUNet"]
