"""Class removal with WordNet: drop training phrases that mention held-out classes (zero- and one-shot setups).

For each held-out class, the lemma names of its WordNet synset and of all its hyponyms (transitively) are
collected, lower-cased with underscores turned into spaces. A phrase is removed if it contains one of the
multi-word lemmas, or if one of its words, lemmatised as a noun (nltk's WordNet lemmatiser: the shortest
``morphy`` analysis), is a single-word lemma — the rule of the released CLIPSeg training code.

The WordNet 3.0 database is read with nltk's `WordNetCorpusReader` from, in this order: the `wordnet_dir`
argument, the ``CLIPSEG_WORDNET_DIR`` environment variable, Debian/Ubuntu's ``wordnet-base`` package
(/usr/share/wordnet), or nltk's own data (``python -m nltk.downloader wordnet``). Debian's package lacks the
``lexnames`` table that nltk reads, so such a directory is copied once into the user's cache directory
(``$XDG_CACHE_HOME/clipseg``, by default ~/.cache/clipseg) with that table added.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..fileio import atomic_path, write_text

if TYPE_CHECKING:
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

WORDNET_DIR_ENV = "CLIPSEG_WORDNET_DIR"
SYSTEM_WORDNET_DIRS: tuple[Path, ...] = (Path("/usr/share/wordnet"), Path("/usr/local/share/wordnet"))
_REQUIRED_FILES = ("data.noun", "index.noun", "noun.exc")

# The lexicographer file table of WordNet 3.0 (lexnames(5WN)): number = position, syntactic category by prefix.
_LEXICOGRAPHER_FILES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
_SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

# The released code replaces person.n.01's (very large) hyponym tree by these words.
_PERSON_LEMMAS = ("person", "human", "man", "woman", "toddler", "baby", "body", "child", "infant")

# Pascal VOC classes in class-index order (1..20) as WordNet synsets, used for the Pascal-5i folds.
PASCAL_5I_SYNSETS: tuple[str, ...] = (
    "aeroplane.n.01", "bicycle.n.01", "bird.n.01", "vessel.n.02", "bottle.n.01", "bus.n.01", "car.n.01",
    "cat.n.01", "chair.n.01", "cattle.n.01", "table.n.02", "dog.n.01", "horse.n.01", "motorcycle.n.01",
    "person.n.01", "pot_plant.n.01", "sheep.n.01", "sofa.n.01", "train.n.01", "television.n.03",
)
# Unseen Pascal classes of the generalized zero-shot splits, added in pairs (unseen-2, -4, ..., -10).
PASCAL_UNSEEN_PAIRS: tuple[tuple[str, str], ...] = (
    ("cattle.n.01", "motorcycle.n.01"), ("aeroplane.n.01", "sofa.n.01"), ("cat.n.01", "television.n.03"),
    ("train.n.01", "bottle.n.01"), ("chair.n.01", "pot_plant.n.01"),
)
# Words removed for the affordance experiments (matched exactly, without WordNet).
AFFORDANCE_WORDS: tuple[str, ...] = (
    "drink", "drinks", "drinking", "sit", "sits", "sitting", "ride", "rides", "riding", "fly", "flies", "flying",
    "drive", "drives", "driving", "driven", "swim", "swims", "swimming", "wheels", "wheel", "legs", "leg", "ear",
    "ears",
)


def preset_synsets(name: str) -> tuple[str, ...]:
    """The held-out synsets of a named setup: ``pascal-unseen-{2,4,6,8,10}`` or ``pascal-5i-{0,1,2,3}``."""
    prefix, _, number = name.rpartition("-")
    if prefix == "pascal-unseen" and number in {"2", "4", "6", "8", "10"}:
        return tuple(s for pair in PASCAL_UNSEEN_PAIRS[: int(number) // 2] for s in pair)
    if prefix == "pascal-5i" and number in {"0", "1", "2", "3"}:
        fold = int(number)
        return PASCAL_5I_SYNSETS[5 * fold : 5 * fold + 5]
    raise ValueError(f"unknown class-removal preset {name!r}; expected one of {', '.join(PRESETS)}")


PRESETS: tuple[str, ...] = (
    *(f"pascal-unseen-{n}" for n in (2, 4, 6, 8, 10)),
    *(f"pascal-5i-{fold}" for fold in range(4)),
    "affordances",
)


class WordNetNotFoundError(FileNotFoundError):
    """No WordNet 3.0 database could be found."""


def _is_wordnet_dir(path: Path) -> bool:
    return all((path / name).is_file() for name in _REQUIRED_FILES)


def _copy_with_lexnames(source: Path, target: Path) -> None:
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    target.mkdir(parents=True, exist_ok=True)
    for name in WordNetCorpusReader._FILES:
        original, copy = source / name, target / name
        if not original.is_file():
            continue
        stat = original.stat()
        if copy.is_file() and copy.stat().st_size == stat.st_size and copy.stat().st_mtime == stat.st_mtime:
            continue
        with atomic_path(copy) as temporary:
            shutil.copy2(original, temporary)
    table = "".join(
        f"{number:02d}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}\n"
        for number, name in enumerate(_LEXICOGRAPHER_FILES)
    )
    write_text(target / "lexnames", table)


def _stage_with_lexnames(source: Path) -> Path:
    """A copy of `source` with the missing ``lexnames`` table added, kept in the user's cache directory.

    The files are copied because nltk refuses symbolic and hard links into corpus directories; the copy is
    refreshed when a source file changes. Without a writable cache directory a temporary one is used.
    """
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha1(str(source).encode()).hexdigest()[:12]
    target = cache_home / "clipseg" / f"wordnet-{digest}"
    try:
        _copy_with_lexnames(source, target)
    except OSError:
        target = Path(tempfile.mkdtemp(prefix="clipseg-wordnet-"))
        atexit.register(shutil.rmtree, target, ignore_errors=True)
        _copy_with_lexnames(source, target)
    return target


@functools.lru_cache(maxsize=1)
def _english_reader_class() -> type[WordNetCorpusReader]:
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class EnglishWordNetReader(WordNetCorpusReader):
        """nltk's reader without the cross-version synset map, which only serves multilingual (OMW) data.

        Building that map needs ``index.sense`` and nltk's own downloaded WordNet, neither of which a system
        WordNet such as Debian's wordnet-base provides.
        """

        def map_wn(self, version: str = "wordnet") -> None:
            return None

    return EnglishWordNetReader


@functools.lru_cache(maxsize=None)
def _reader_for(directory: Path | None) -> WordNetCorpusReader:
    import nltk

    if directory is None:
        root = nltk.data.find("corpora/wordnet")
    else:
        root = directory if (directory / "lexnames").is_file() else _stage_with_lexnames(directory)
        # nltk >= 3.9 reads corpora only below the directories on its data path.
        if str(root) not in nltk.data.path:
            nltk.data.path.append(str(root))
        root = str(root)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions are not available")
        return _english_reader_class()(root, None)


def load_wordnet(wordnet_dir: str | Path | None = None) -> WordNetCorpusReader:
    """nltk's reader over the WordNet 3.0 database (see the module docstring for where it is looked for).

    Raises:
        WordNetNotFoundError: no database found; the message says how to install one.
        ImportError: nltk is not installed.
    """
    try:
        import nltk
    except ImportError:
        raise ImportError("WordNet class removal needs nltk: pip install nltk") from None
    explicit = wordnet_dir if wordnet_dir is not None else os.environ.get(WORDNET_DIR_ENV)
    if explicit:
        directory = Path(explicit).expanduser().resolve()
        if not _is_wordnet_dir(directory):
            raise WordNetNotFoundError(
                f"no WordNet database (data.noun, index.noun, noun.exc) in {directory}; "
                "install one with `apt-get install wordnet-base` or fix the path"
            )
        return _reader_for(directory)
    for candidate in SYSTEM_WORDNET_DIRS:
        if _is_wordnet_dir(candidate):
            return _reader_for(candidate.resolve())
    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        raise WordNetNotFoundError(
            "WordNet 3.0 not found: install it with `apt-get install wordnet-base` (or `python -m nltk.downloader "
            f"wordnet`), or point wordnet_dir= or {WORDNET_DIR_ENV} at a directory holding data.noun and index.noun"
        ) from None
    return _reader_for(None)


def _hyponym_lemmas(synset) -> list[str]:
    if synset.name() == "person.n.01":
        return list(_PERSON_LEMMAS)
    lemmas = list(synset.lemma_names())
    for hyponym in synset.hyponyms():
        lemmas += _hyponym_lemmas(hyponym)
    return lemmas


def removal_lemmas(synset_names: Iterable[str], wordnet: WordNetCorpusReader) -> set[str]:
    """Lemma names of the synsets and all their hyponyms, lower-cased, underscores as spaces.

    ``person.n.01`` contributes a fixed list of words instead of its hyponym tree, as in the released code.
    """
    lemmas: set[str] = set()
    for name in synset_names:
        try:
            synset = wordnet.synset(name)
        except Exception as error:  # nltk raises WordNetError or ValueError for unknown or malformed names
            raise ValueError(f"unknown WordNet synset {name!r}: {error}") from None
        lemmas.update(lemma.replace("_", " ").lower() for lemma in _hyponym_lemmas(synset))
    return lemmas


class PhraseFilter:
    """Predicate that is True for phrases to remove (pass it as ``exclude_phrase`` to `PhraseCutPlus`).

    Args:
        single_words: words removed when any (lemmatised) word of a phrase equals one of them.
        multi_words: multi-word expressions removed when a phrase contains one of them.
        lemmatize: maps a word to its lemma before matching `single_words`; None matches words as they are.
    """

    def __init__(
        self,
        single_words: Iterable[str],
        multi_words: Iterable[str] = (),
        lemmatize: Callable[[str], str] | None = None,
    ) -> None:
        self.single_words = frozenset(single_words)
        self.multi_words = frozenset(multi_words)
        self._lemmatize = functools.lru_cache(maxsize=None)(lemmatize) if lemmatize is not None else None

    def __call__(self, phrase: str) -> bool:
        phrase = phrase.lower()
        if any(expression in phrase for expression in self.multi_words):
            return True
        words = phrase.split(" ")
        if self._lemmatize is not None:
            words = [self._lemmatize(word) for word in words]
        return not self.single_words.isdisjoint(words)

    @classmethod
    def from_synsets(
        cls, synset_names: Iterable[str], *, wordnet_dir: str | Path | None = None
    ) -> PhraseFilter:
        """Remove phrases mentioning the synsets (e.g. ``"cat.n.01"``) or any of their hyponyms."""
        wordnet = load_wordnet(wordnet_dir)
        lemmas = removal_lemmas(synset_names, wordnet)

        def lemmatize(word: str) -> str:
            # nltk's WordNetLemmatizer.lemmatize, bound to this reader: the shortest noun analysis, else the word.
            analyses = wordnet._morphy(word, "n")
            return min(analyses, key=len) if analyses else word

        return cls(
            single_words={lemma for lemma in lemmas if " " not in lemma},
            multi_words={lemma for lemma in lemmas if " " in lemma},
            lemmatize=lemmatize,
        )

    @classmethod
    def from_preset(cls, name: str, *, wordnet_dir: str | Path | None = None) -> PhraseFilter:
        """A named setup from `PRESETS`: Pascal zero-shot unseen classes, Pascal-5i folds, or affordances."""
        if name == "affordances":
            return cls(single_words=AFFORDANCE_WORDS)
        return cls.from_synsets(preset_synsets(name), wordnet_dir=wordnet_dir)
