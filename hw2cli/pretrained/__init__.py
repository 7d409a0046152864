"""Loading other people's weights: the Hugging Face Hub, CLIP, Stable Diffusion."""
