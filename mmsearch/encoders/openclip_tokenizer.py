"""OpenCLIP's ``SimpleTokenizer`` (the byte-level BPE of OpenAI CLIP) without torch: token ids as NumPy.

The same algorithm as ``open_clip.tokenizer.SimpleTokenizer`` (MIT licence, from OpenAI's CLIP) with its
default cleaning (``clean="lower"``: ftfy, HTML unescape, collapsed whitespace, lower case) and truncation
(a text longer than the context keeps its first ``context_length`` tokens, the last one replaced by
``<end_of_text>``). It needs ``ftfy`` and ``regex`` and the vocabulary file ``bpe_simple_vocab_16e6.txt.gz``
(open_clip ships it; an ONNX export copies it beside the graphs). tests/test_openclip_onnx.py checks the ids
equal open_clip's.
"""

from __future__ import annotations

import gzip
import html
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable unicode character map of CLIP's BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _clean(text: str) -> str:
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


class ClipTokenizer:
    """``ClipTokenizer(vocab_path, context_length)(texts)`` -> (N, context_length) int64 token ids."""

    def __init__(self, vocab_path: str | Path, context_length: int = 77) -> None:
        import regex

        merges_text = gzip.open(vocab_path).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in merges_text[1 : 49152 - 256 - 2 + 1]]
        vocab = list(_bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + list(SPECIAL_TOKENS)
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.bpe_ranks = {merge: i for i, merge in enumerate(merges)}
        self.cache: dict[str, str] = {t: t for t in SPECIAL_TOKENS}
        special = "|".join(SPECIAL_TOKENS)
        self.pat = regex.compile(special + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                                 regex.IGNORECASE)
        self.sot_token_id, self.eot_token_id = (self.encoder[t] for t in SPECIAL_TOKENS)
        self.context_length = int(context_length)
        self.vocab_size = len(self.encoder)

    def bpe(self, token: str) -> str:
        """The BPE merges of one pre-token, as space-separated symbols."""
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        joined = " ".join(word)
        self.cache[token] = joined
        return joined

    def encode(self, text: str) -> list[int]:
        """The BPE ids of one text, without the start and end tokens."""
        byte_encoder = _bytes_to_unicode()
        ids: list[int] = []
        for token in self.pat.findall(_clean(text)):
            token = "".join(byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(token).split(" "))
        return ids

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """Token ids (N, context_length) int64: start, the text's ids, end, zero padding (truncated to fit)."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            tokens = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(tokens) > self.context_length:
                tokens = tokens[: self.context_length]
                tokens[-1] = self.eot_token_id
            out[row, : len(tokens)] = tokens
        return out


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word, word[1:]))
