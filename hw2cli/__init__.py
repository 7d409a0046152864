"""hw2: one command for the generative-vision homework (DDPM, DDIM, CLIP, personalization)."""

__version__ = "0.1.0"
