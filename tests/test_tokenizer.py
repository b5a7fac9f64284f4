"""The CLIP tokenizer against transformers' CLIPTokenizer (an independent implementation on the same files).

transformers skips CLIP's ftfy + HTML cleaning and lower-cases per character, so the two are compared on
text that cleaning leaves alone; OpenAI's cleaning is pinned separately on strings where they differ.
"""

import gzip
import html
import importlib.resources
import json
from collections import Counter
from pathlib import Path

import ftfy
import pytest
import regex
import torch
import transformers
from tokenizers import pre_tokenizers

from clipseg.tokenizer import CLIPTokenizer, TokenizedText

SOT, EOT = "<|startoftext|>", "<|endoftext|>"

CORPUS = """
A photo of a cat. A photo of a dog! Two photos of the cats and three dogs on a sofa.
It's a café with naïve art; the résumé isn't there. We're sure they've gone, I'm told, you'll see, he'd go.
東京タワーの写真 東京の猫 写真の猫 😀 😀😀 👍🏽 🐈‍⬛ cat 🐈‍⬛
Numbers: 1234, 3.14, 100% and 2022 — prices $5.99, €7.50.
Segmentation of images from text prompts: the model predicts a mask for every object the phrase names,
whether a zebra in the grass, a red umbrella near the window, or the handle of a wooden kitchen drawer.
Visual prompts work too: show one example image with its mask and the decoder finds similar regions.
Zürich, Kraków, São Paulo, Ελλάδα, Москва and 서울 are cities; quick brown foxes jump over lazy dogs.
""" * 3

# Text that ftfy and html.unescape leave unchanged: here both tokenizers must agree id for id.
PRECLEANED = [
    "a photo of a cat.",
    "A Photo Of A CAT",
    "café naïve résumé ÉCOLE",
    "東京タワーの写真",
    "😀 👍🏽 🐈\u200d⬛ cat😀cat",
    "a   photo \t of\n\n a   dog  ",
    "",
    "   ",
    "hello, world!!! (yes) -- ok?... [brackets] {braces} <angle> @#%^*",
    "1234 3.14 100% 2022-07-19 ١٢٣",
    "don't it's we're i've i'm you'll he'd DON'T WE'LL 'quoted' o'clock",
    "<|endoftext|> inside <|startoftext|>",
    " ".join(["photos of cats and dogs on a sofa"] * 20),  # far over 77 tokens
]


def _learn_merges(words: Counter, count: int) -> list[tuple[str, str]]:
    """Plain BPE training: repeatedly merge the most frequent adjacent pair (ties broken by the pair)."""
    splits = {tuple(word[:-1]) + (word[-1] + "</w>",): n for word, n in words.items()}
    merges = []
    for _ in range(count):
        pairs = Counter()
        for symbols, n in splits.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        merged_splits = {}
        for symbols, n in splits.items():
            out, i = [], 0
            while i < len(symbols):
                if symbols[i : i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged_splits[tuple(out)] = n
        splits = merged_splits
    return merges


@pytest.fixture(scope="module")
def small_vocab_dir(tmp_path_factory) -> Path:
    """A few hundred merges learned from CORPUS, written as vocab.json + merges.txt in HF layout."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    words = Counter(
        byte_level.pre_tokenize_str(word)[0][0]
        for word in regex.findall(r"\p{L}+|\p{N}|[^\s\p{L}\p{N}]+", CORPUS.lower())
    )
    merges = _learn_merges(words, 300)
    assert len(merges) == 300
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in [*symbols, *(s + "</w>" for s in symbols), *(a + b for a, b in merges), SOT, EOT]:
        vocab.setdefault(token, len(vocab))
    directory = tmp_path_factory.mktemp("small_vocab")
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{first} {second}\n" for first, second in merges)
    (directory / "merges.txt").write_text(merges_text, encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def real_vocab_pair(tmp_path_factory):
    """Ours and transformers' tokenizer on OpenAI's vocabulary, converted by from_bpe_file + save_pretrained."""
    directory = tmp_path_factory.mktemp("real_vocab")
    CLIPTokenizer.default().save_pretrained(directory)
    return _load_both(directory)


def _load_both(directory: Path):
    return CLIPTokenizer.from_pretrained(directory), transformers.CLIPTokenizer.from_pretrained(str(directory))


def _assert_same_as_transformers(ours: CLIPTokenizer, theirs, texts: list[str]) -> None:
    for text in texts:
        assert ftfy.fix_text(text) == text and html.unescape(text) == text, "not a pre-cleaned string"
        assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"], text
    batch = ours(texts)
    reference = theirs(texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    assert batch.ids.shape == reference["input_ids"].shape == (len(texts), 77)
    assert torch.equal(batch.attention_mask, reference["attention_mask"])
    for row, length in enumerate(batch.attention_mask.sum(dim=1).tolist()):
        # Same ids up to and including EOT; transformers pads with its pad token (EOT), OpenAI and we with 0.
        assert torch.equal(batch.ids[row, :length], reference["input_ids"][row, :length])
        assert batch.ids[row, length - 1] == ours.eot_token_id
        assert not batch.ids[row, length:].any()


def test_matches_transformers_on_small_learned_vocab(small_vocab_dir):
    ours, theirs = _load_both(small_vocab_dir)
    assert ours.vocab_size == len(theirs) == len(json.loads((small_vocab_dir / "vocab.json").read_text()))
    assert (ours.sot_token_id, ours.eot_token_id) == (theirs.bos_token_id, theirs.eos_token_id)
    _assert_same_as_transformers(ours, theirs, PRECLEANED)
    # The learned merges are really used: a corpus word becomes a single token.
    assert len(ours.encode("photo")) == 1


def test_matches_transformers_on_real_vocab(real_vocab_pair):
    ours, theirs = real_vocab_pair
    assert (ours.vocab_size, ours.sot_token_id, ours.eot_token_id) == (49408, 49406, 49407)
    assert len(theirs) == 49408
    _assert_same_as_transformers(ours, theirs, PRECLEANED)


@pytest.mark.parametrize(
    ("raw", "cleaned", "expected_ids"),
    [
        # "&amp;" → "&" after html.unescape; "&</w>" is byte symbol 5 ('!' is 0) + 256 = 261.
        ("&amp;", "&", [261]),
        # "&lt;" → "<"; "<</w>" is byte symbol 27 + 256 = 283.
        ("&lt;", "<", [283]),
        # Unescaped twice: "&amp;lt;" → "&lt;" → "<".
        ("&amp;lt;", "<", [283]),
        # ftfy straightens curly quotes: “ ” → '"' ("\"</w>" = 257, a = 320).
        ("“a”", '"a"', [257, 320, 257]),
        # ftfy expands the ligature ﬁ → "fi"; "fish</w>" is one token, 2759.
        ("ﬁsh", "fish", [2759]),
        # ftfy folds full-width letters, then lower(): "ＣＵＰ" → "cup" (1937).
        ("ＣＵＰ", "cup", [1937]),
        # str.lower() gives the word-final sigma ς (CF 82), per-character lowering σ (CF 83).
        ("ΟΔΟΣ", "οδος", [138, 123, 138, 112, 138, 123, 139, 480]),
        # ftfy repairs UTF-8 read as Windows-1252: "cafÃ©" → "café" (15304).
        ("cafÃ©", "café", [15304]),
    ],
)
def test_openai_cleaning_where_transformers_differs(real_vocab_pair, raw, cleaned, expected_ids):
    ours, theirs = real_vocab_pair
    assert ours.encode(raw) == ours.encode(cleaned) == expected_ids
    assert theirs(cleaned, add_special_tokens=False)["input_ids"] == expected_ids
    assert theirs(raw, add_special_tokens=False)["input_ids"] != expected_ids


def test_long_prompt_is_truncated_with_eot_last():
    tokenizer = CLIPTokenizer.default()
    prompt = " ".join(["a photo of cats"] * 75)  # 300 words
    full = tokenizer.encode(prompt)
    assert len(full) == 300
    result = tokenizer(prompt)
    assert isinstance(result, TokenizedText)
    assert result.ids.shape == result.attention_mask.shape == (1, 77)
    assert result.ids.dtype == result.attention_mask.dtype == torch.long
    assert result.ids[0, :76].tolist() == [tokenizer.sot_token_id, *full[:75]]
    assert result.ids[0, -1] == tokenizer.eot_token_id
    assert result.attention_mask.all()
    with pytest.raises(ValueError, match=r"prompt 'a photo of cats a photo.*302 tokens.*context length 77"):
        tokenizer(prompt, truncate=False)
    assert tokenizer(prompt, context_length=400, truncate=False).ids[0, 301] == tokenizer.eot_token_id


def test_batch_padding_and_empty_string():
    tokenizer = CLIPTokenizer.default()
    ids, attention_mask = tokenizer(["", "a cat"])
    assert ids[0, :3].tolist() == [49406, 49407, 0]
    assert ids[1, :4].tolist() == [49406, 320, 2368, 49407]
    assert not ids[:, 4:].any()
    assert attention_mask.sum(dim=1).tolist() == [2, 4]
    assert tokenizer("a cat", context_length=10).ids.shape == (1, 10)
    assert tokenizer([]).ids.shape == (0, 77)


def test_bad_input_raises_clear_errors():
    tokenizer = CLIPTokenizer.default()
    with pytest.raises(TypeError, match=r"texts\[1\] must be str, got int"):
        tokenizer(["a cat", 3])
    with pytest.raises(TypeError, match="texts must be a str or a sequence of str, got NoneType"):
        tokenizer(None)
    with pytest.raises(TypeError, match="text must be str, got bytes"):
        tokenizer.encode(b"a cat")
    with pytest.raises(ValueError, match="context_length must be at least 2"):
        tokenizer("a cat", context_length=1)
    with pytest.raises(ValueError, match="token id 49408 is not in the vocabulary"):
        tokenizer.decode([320, 49408])


def test_decode():
    tokenizer = CLIPTokenizer.default()
    row = tokenizer("  A Photo of a CAT.  ").ids[0]
    assert tokenizer.decode(row) == "a photo of a cat ."
    assert tokenizer.decode(row[:8], skip_special_tokens=False) == "<|startoftext|>a photo of a cat . <|endoftext|>"
    assert tokenizer.decode(tokenizer.encode("東京 😀 café")) == "東京 😀 café"


def test_save_pretrained_round_trip(tmp_path, small_vocab_dir):
    for original in (CLIPTokenizer.default(), CLIPTokenizer.from_pretrained(small_vocab_dir)):
        directory = tmp_path / str(original.vocab_size)
        original.save_pretrained(directory)
        assert sorted(p.name for p in directory.iterdir()) == [
            "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"
        ]
        reloaded = CLIPTokenizer.from_pretrained(directory)
        assert torch.equal(reloaded(PRECLEANED).ids, original(PRECLEANED).ids)
        assert reloaded.encode("ΟΔΟΣ &amp; ﬁsh") == original.encode("ΟΔΟΣ &amp; ﬁsh")


@pytest.mark.parametrize(
    ("text", "published_ids"),
    [  # ids printed by OpenAI CLIP / transformers docs and ports for these prompts
        ("a photo of a cat", [320, 1125, 539, 320, 2368]),
        ("a photo of a dog", [320, 1125, 539, 320, 1929]),
        ("sunset over the beach", [3424, 962, 518, 2117]),
        ("Hello World 123", [3306, 1002, 272, 273, 274]),
        ("a cat & a dog", [320, 2368, 261, 320, 1929]),
    ],
)
def test_vendored_vocab_gives_published_ids(text, published_ids):
    assert CLIPTokenizer.default()(text).ids[0, : len(published_ids) + 2].tolist() == [49406, *published_ids, 49407]


def test_from_bpe_file_and_default(tmp_path):
    default = CLIPTokenizer.default()
    assert CLIPTokenizer.default() is default
    bpe_resource = importlib.resources.files("clipseg") / "assets" / "bpe_simple_vocab_16e6.txt.gz"
    with importlib.resources.as_file(bpe_resource) as path:
        loaded = CLIPTokenizer.from_bpe_file(path)
    assert loaded is not default and loaded.vocab_size == default.vocab_size == 49408

    with pytest.raises(FileNotFoundError, match="missing.txt.gz"):
        CLIPTokenizer.from_bpe_file(tmp_path / "missing.txt.gz")
    not_gzip = tmp_path / "plain.txt"
    not_gzip.write_text("#version: 0.2\ni n\n")
    with pytest.raises(ValueError, match="not a gzipped UTF-8 BPE merges file"):
        CLIPTokenizer.from_bpe_file(not_gzip)
    short = tmp_path / "short.txt.gz"
    short.write_bytes(gzip.compress(b"#version: 0.2\ni n\nt h\n"))
    with pytest.raises(ValueError, match="holds 2 merges"):
        CLIPTokenizer.from_bpe_file(short)


def test_from_pretrained_rejects_incomplete_files(tmp_path, small_vocab_dir):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        CLIPTokenizer.from_pretrained(tmp_path)
    vocab = json.loads((small_vocab_dir / "vocab.json").read_text(encoding="utf-8"))
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\nq z\n", encoding="utf-8")
    with pytest.raises(ValueError, match="merge 0 \\('q', 'z'\\) makes 'qz', which is not in the vocabulary"):
        CLIPTokenizer.from_pretrained(tmp_path)
    del vocab[EOT]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(ValueError, match="lacks the special token"):
        CLIPTokenizer.from_pretrained(tmp_path)
