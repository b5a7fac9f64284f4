"""OpenAI's CLIP text tokenizer, reproduced exactly, with batching, truncation and HF-format files.

Text is cleaned the way CLIP was trained (ftfy, HTML unescaping, whitespace collapsing, lower-casing),
split with CLIP's regular expression, byte-encoded and merged by byte-level BPE with ``</w>`` word ends.
A prompt becomes ``[<|startoftext|>] + ids + [<|endoftext|>]``, zero-padded to the context length (77).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import json
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import ftfy
import regex
import torch

from .fileio import MAX_TOKENIZER_BYTES, read_json_file, read_limited_text, write_text
from .messages import shorten

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
WORD_END = "</w>"
CONTEXT_LENGTH = 77

# OpenAI's vocabulary: 256 byte symbols, the same with </w>, these many merges, then the two special tokens.
_OPENAI_MERGE_COUNT = 49152 - 256 - 2
_DEFAULT_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# Bounds the per-word BPE memo so a long-running process cannot grow it without limit.
_BPE_CACHE_LIMIT = 100_000

_WHITESPACE = regex.compile(r"\s+")
# IGNORECASE as in OpenAI's code: the text is already lower-cased, yet the flag still matters for
# case-folding characters (e.g. "'ſ" is one contraction token with it, two tokens without).
_WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def _byte_symbols() -> dict[int, str]:
    """Map every byte to a printable character, as GPT-2/CLIP byte-level BPE does.

    Printable Latin-1 bytes stand for themselves; the 68 others (controls, space, NBSP, soft hyphen)
    are shifted to U+0100 onwards in byte order. The dict order (printable first) is the order of the
    first 256 vocabulary ids.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols = {byte: chr(byte) for byte in printable}
    shifted = (byte for byte in range(256) if byte not in symbols)
    symbols.update({byte: chr(256 + offset) for offset, byte in enumerate(shifted)})
    return symbols


_BYTE_SYMBOLS = _byte_symbols()
_SYMBOL_BYTES = {symbol: byte for byte, symbol in _BYTE_SYMBOLS.items()}
# Translates a latin-1-decoded byte string (one char per byte) into byte symbols in one call.
_BYTES_TO_SYMBOLS = str.maketrans({chr(byte): symbol for byte, symbol in _BYTE_SYMBOLS.items()})


def clean_text(text: str) -> str:
    """Normalise text exactly as OpenAI's CLIP tokenizer does before splitting it into words.

    ``ftfy.fix_text`` (mojibake, curly quotes, ligatures, full-width letters, NFC), HTML unescaping
    twice, strip, collapse whitespace runs to one space, then ``str.lower()`` (which, unlike a
    per-character lower-casing, turns a word-final Greek sigma into ς).
    """
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


class TokenizedText(NamedTuple):
    """A batch of tokenized prompts.

    ``ids``: LongTensor (B, context_length), start token, BPE ids, end token, then zeros.
    ``attention_mask``: LongTensor (B, context_length), 1 up to and including the end token, else 0.
    """

    ids: torch.Tensor
    attention_mask: torch.Tensor


class CLIPTokenizer:
    """OpenAI's CLIP byte-level BPE tokenizer.

    Build it with :meth:`default` (the vendored OpenAI vocabulary), :meth:`from_bpe_file`,
    :meth:`from_pretrained` (a directory with ``vocab.json`` and ``merges.txt``) or directly from a
    vocabulary and an ordered merges list.
    """

    def __init__(self, vocab: Mapping[str, int], merges: Sequence[tuple[str, str]]) -> None:
        """Create a tokenizer from ``vocab`` (token → id) and ``merges`` (symbol pairs, best first)."""
        for token in (SOT_TOKEN, EOT_TOKEN):
            if token not in vocab:
                raise ValueError(f"vocabulary lacks the special token {token!r}")
        for symbol in _BYTE_SYMBOLS.values():
            for token in (symbol, symbol + WORD_END):
                if token not in vocab:
                    raise ValueError(f"vocabulary lacks the byte symbol {token!r}; byte-level BPE needs all 512")
        for rank, (first, second) in enumerate(merges):
            if first + second not in vocab:
                raise ValueError(
                    f"merge {rank} ({first!r}, {second!r}) makes {first + second!r}, which is not in the vocabulary"
                )
        self._token_to_id = dict(vocab)
        self._id_to_token = {token_id: token for token, token_id in self._token_to_id.items()}
        self._merges = [tuple(merge) for merge in merges]
        # With repeated merges the last rank wins, as in OpenAI's dict(zip(merges, range(...))).
        self._merge_ranks = {merge: rank for rank, merge in enumerate(self._merges)}
        self._bpe_cache: dict[str, tuple[str, ...]] = {}

    @classmethod
    def from_bpe_file(cls, path: str | os.PathLike) -> CLIPTokenizer:
        """Load OpenAI's gzipped merges file (``bpe_simple_vocab_16e6.txt.gz``) and build its vocabulary.

        As OpenAI does: skip the header line, keep the next 49152-256-2 merges, and number the 256 byte
        symbols, the same with ``</w>``, the joined merges, then the two special tokens.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"BPE merges file not found: {path}")
        try:
            lines = gzip.decompress(path.read_bytes()).decode("utf-8").rstrip("\n").split("\n")
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not a gzipped UTF-8 BPE merges file: {error}") from error
        merge_lines = lines[1 : 1 + _OPENAI_MERGE_COUNT]
        if len(merge_lines) < _OPENAI_MERGE_COUNT:
            raise ValueError(
                f"{path} holds {len(merge_lines)} merges; OpenAI's CLIP vocabulary needs {_OPENAI_MERGE_COUNT}"
            )
        merges = [_parse_merge(line, path, number) for number, line in enumerate(merge_lines, start=2)]
        tokens = [*_BYTE_SYMBOLS.values()]
        tokens += [symbol + WORD_END for symbol in tokens]
        tokens += [first + second for first, second in merges]
        tokens += [SOT_TOKEN, EOT_TOKEN]
        # dict() keeps the last id of a repeated token, exactly as OpenAI's encoder does.
        return cls(dict(zip(tokens, range(len(tokens)))), merges)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> CLIPTokenizer:
        """Load ``vocab.json`` and ``merges.txt`` (Hugging Face layout, ``#version`` header optional)."""
        directory = Path(directory)
        vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
        for path in (vocab_path, merges_path):
            if not path.exists():
                raise FileNotFoundError(f"{path} not found; a CLIP tokenizer directory needs vocab.json and merges.txt")
        vocab = read_json_file(vocab_path, MAX_TOKENIZER_BYTES, "tokenizer vocabulary")
        if not isinstance(vocab, dict) or not all(
            isinstance(token_id, int) and not isinstance(token_id, bool) and token_id >= 0 for token_id in vocab.values()
        ):
            raise ValueError(f"{vocab_path}: not a vocabulary (expected a JSON object mapping tokens to ids >= 0)")
        lines = read_limited_text(merges_path, MAX_TOKENIZER_BYTES, "BPE merges file").split("\n")
        merges = [
            _parse_merge(line, merges_path, number)
            for number, line in enumerate(lines, start=1)
            if line.strip() and not (number == 1 and line.startswith("#version"))
        ]
        if not merges:
            raise ValueError(f"{merges_path}: no merges (an empty BPE merges file would split every word into bytes)")
        try:
            return cls(vocab, merges)
        except ValueError as error:
            raise ValueError(f"{vocab_path}: {error}") from None

    @classmethod
    @functools.lru_cache(maxsize=1)
    def default(cls) -> CLIPTokenizer:
        """The tokenizer CLIP was trained with, from the vendored OpenAI merges file (built once, then shared)."""
        resource = importlib.resources.files("clipseg") / "assets" / _DEFAULT_BPE_FILE
        with importlib.resources.as_file(resource) as path:
            return cls.from_bpe_file(path)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``vocab.json``, ``merges.txt`` and the small configs transformers' CLIPTokenizer reads."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab = dict(sorted(self._token_to_id.items(), key=lambda item: item[1]))
        merges = "".join(f"{first} {second}\n" for first, second in self._merges)
        # transformers' conventions for CLIP: unknown and padding tokens are the end token.
        special_tokens = {
            "bos_token": SOT_TOKEN, "eos_token": EOT_TOKEN, "unk_token": EOT_TOKEN, "pad_token": EOT_TOKEN
        }
        config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": CONTEXT_LENGTH, **special_tokens}
        write_text(directory / "vocab.json", json.dumps(vocab, ensure_ascii=False))
        write_text(directory / "merges.txt", "#version: 0.2\n" + merges)
        write_text(directory / "special_tokens_map.json", json.dumps(special_tokens, indent=2))
        write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2))

    @property
    def vocab_size(self) -> int:
        """Number of tokens in the vocabulary (49408 for OpenAI's)."""
        return len(self._token_to_id)

    @property
    def max_id(self) -> int:
        """The largest token id; the text tower needs at least `max_id + 1` token embeddings."""
        return max(self._token_to_id.values())

    @property
    def sot_token_id(self) -> int:
        """Id of ``<|startoftext|>`` (49406 for OpenAI's vocabulary)."""
        return self._token_to_id[SOT_TOKEN]

    @property
    def eot_token_id(self) -> int:
        """Id of ``<|endoftext|>`` (49407 for OpenAI's vocabulary)."""
        return self._token_to_id[EOT_TOKEN]

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` after CLIP's cleaning, without start/end tokens."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        ids = []
        for word in _WORD_PATTERN.findall(clean_text(text)):
            symbols = word.encode("utf-8").decode("latin-1").translate(_BYTES_TO_SYMBOLS)
            ids.extend(self._token_to_id[token] for token in self._bpe(symbols))
        return ids

    def decode(self, ids: Iterable[int] | torch.Tensor, *, skip_special_tokens: bool = True) -> str:
        """Text of token ids; ``</w>`` word ends become spaces.

        With ``skip_special_tokens`` the start token is dropped and decoding stops at the first end token,
        so a padded row of :meth:`__call__`'s ``ids`` decodes to its (cleaned) text.
        """
        if isinstance(ids, torch.Tensor):
            if ids.ndim != 1:
                raise ValueError(f"decode takes a 1-D tensor of ids, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        text_bytes = bytearray()
        for token_id in ids:
            if skip_special_tokens and token_id == self.sot_token_id:
                continue
            if skip_special_tokens and token_id == self.eot_token_id:
                break
            token = self._id_to_token.get(token_id)
            if token is None:
                raise ValueError(f"token id {token_id} is not in the vocabulary (size {self.vocab_size})")
            word_end = token.endswith(WORD_END)
            # Special tokens are plain ASCII, which the byte symbols map to themselves.
            text_bytes.extend(_SYMBOL_BYTES[symbol] for symbol in token.removesuffix(WORD_END))
            if word_end:
                text_bytes.extend(b" ")
        return text_bytes.decode("utf-8", errors="replace").rstrip(" ")

    def __call__(
        self, texts: str | Sequence[str], *, context_length: int = CONTEXT_LENGTH, truncate: bool = True
    ) -> TokenizedText:
        """Tokenize one prompt or a batch into ``TokenizedText`` of shape (B, context_length).

        Over-long prompts keep their first ``context_length - 1`` tokens and end with the end token; with
        ``truncate=False`` they raise ValueError instead.
        """
        if isinstance(texts, str):
            texts = [texts]
        elif not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a str or a sequence of str, got {type(texts).__name__}")
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (start and end tokens), got {context_length}")
        ids = torch.zeros(len(texts), context_length, dtype=torch.long)
        attention_mask = torch.zeros_like(ids)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{row}] must be str, got {type(text).__name__}")
            tokens = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(tokens) > context_length:
                if not truncate:
                    raise ValueError(
                        f"prompt {shorten(text, 61)!r} is {len(tokens)} tokens long with start/end tokens, over the "
                        f"context length {context_length}; shorten it or pass truncate=True"
                    )
                tokens = [*tokens[: context_length - 1], self.eot_token_id]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            attention_mask[row, : len(tokens)] = 1
        return TokenizedText(ids, attention_mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, merges={len(self._merges)})"

    def _bpe(self, symbols: str) -> tuple[str, ...]:
        """Merge one byte-encoded word: repeatedly join every occurrence of its best-ranked adjacent pair."""
        if symbols in (SOT_TOKEN, EOT_TOKEN):
            return (symbols,)
        cached = self._bpe_cache.get(symbols)
        if cached is not None:
            return cached
        word = [*symbols[:-1], symbols[-1] + WORD_END]
        unmergeable = len(self._merges)
        while len(word) > 1:
            best_rank = min(self._merge_ranks.get(pair, unmergeable) for pair in zip(word, word[1:]))
            if best_rank == unmergeable:
                break
            first, second = self._merges[best_rank]
            merged, index = [], 0
            while index < len(word):
                if index + 1 < len(word) and word[index] == first and word[index + 1] == second:
                    merged.append(first + second)
                    index += 2
                else:
                    merged.append(word[index])
                    index += 1
            word = merged
        if len(self._bpe_cache) >= _BPE_CACHE_LIMIT:
            self._bpe_cache.clear()
        self._bpe_cache[symbols] = result = tuple(word)
        return result


def _parse_merge(line: str, path: Path, line_number: int) -> tuple[str, str]:
    parts = line.split()
    if len(parts) != 2:
        raise ValueError(f"{path}, line {line_number}: expected a merge of two symbols, got {line!r}")
    return parts[0], parts[1]
