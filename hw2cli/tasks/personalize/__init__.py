"""P3b core: personalising Stable Diffusion v1 with new tokens, in three parts.

- :mod:`.concepts`: what a concept is (a token, its images, an initialiser word), the new
  tokens in the tokenizer and text encoder, and learned embeddings saved and loaded in diffusers'
  format;
- :mod:`.train`: textual inversion (Gal et al. 2022: only the new tokens' rows learn) and Custom
  Diffusion (Kumari et al. 2023: the cross-attention K/V learn with one token per concept), run
  through ``accelerate``;
- :mod:`.generate`: the graded ``hw2_3.sh`` layout and free prompts, resumable.

The homework's ``input.json`` is read by :mod:`hw2cli.data.prompts`; grading is
:mod:`hw2cli.tasks.grading`.
"""
