"""CLIP's BPE tokenizer files (``vocab.json``, ``merges.txt``), derived offline from the vocabulary
open_clip ships: what transformers' ``CLIPTokenizer`` (and Stable Diffusion v1's tokenizer) read."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

# The tokenizer files OpenAI's Hub repos name their special tokens with (open_clip's BPE file
# calls them <start_of_text>/<end_of_text>, with the same ids).
START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"


def write_clip_tokenizer_files(folder: str | os.PathLike[str]) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` of CLIP's BPE tokenizer into ``folder``; return it.

    Derived offline from ``bpe_simple_vocab_16e6.txt.gz``, the vocabulary open_clip ships (the one
    OpenAI's CLIP and Stable Diffusion v1 use): 256 byte symbols, the same with ``</w>``, 48,894
    merges, then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407), the ids open_clip's
    tokenizer gives. ``transformers.CLIPTokenizer(vocab_json, merges_txt)`` and
    ``CLIPTokenizer.from_pretrained(folder)`` accept them; other files in ``folder`` are left alone.
    Written atomically; an existing identical pair is not rewritten.
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    from hw2cli.io.atomic import write_text

    folder = Path(folder)
    with gzip.open(default_bpe()) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [START_TOKEN, END_TOKEN]
    vocab_text = json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False)
    merges_text = "#version: 0.2\n" + "\n".join(merges) + "\n"
    for filename, text in (("vocab.json", vocab_text), ("merges.txt", merges_text)):
        target = folder / filename
        if target.is_file() and _digest(target.read_bytes()) == _digest(text.encode("utf-8")):
            continue
        write_text(target, text)
    return folder


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
