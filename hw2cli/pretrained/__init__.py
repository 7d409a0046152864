"""Loading other people's weights: the Hugging Face Hub probe (fail fast offline), CLIP
(open_clip and transformers), the CLIP tokenizer files, Stable Diffusion (diffusers folders,
Hub ids and the original Lightning ``.ckpt``, read safely) and the adapter that routes SD's
norm and attention through ``hw2kernels``."""
