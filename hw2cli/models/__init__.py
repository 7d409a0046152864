"""Networks only (no samplers, no I/O)."""

from hw2cli.models.context_unet import ContextUnet
from hw2cli.models.digit_unet import DigitUNet, DigitUNetConfig
from hw2cli.models.face_unet import FaceUNet

__all__ = ["ContextUnet", "DigitUNet", "DigitUNetConfig", "FaceUNet"]
