"""Networks only (no samplers, no I/O, no weights of other people: those are in
:mod:`hw2cli.pretrained`): the conditional DigitUNet and TeaPearce's ContextUnet (P1), the
homework's FaceUNet (P2), the digit classifiers the graders use, and the layers they share
(norm and attention routed through ``hw2kernels``)."""

from hw2cli.models.context_unet import ContextUnet
from hw2cli.models.digit_unet import DigitUNet, DigitUNetConfig
from hw2cli.models.face_unet import FaceUNet

__all__ = ["ContextUnet", "DigitUNet", "DigitUNetConfig", "FaceUNet"]
