"""Tests of WordNet class removal, on the real WordNet 3.0 database (Debian: apt-get install wordnet-base)."""


import pytest

from clipseg.data import wordnet
from clipseg.data.phrasecut import PhraseCut
from clipseg.data.phrasecut_plus import PhraseCutPlus
from clipseg.data.synthetic import write_phrasecut
from clipseg.data.wordnet import (
    PRESETS,
    PhraseFilter,
    WordNetNotFoundError,
    load_wordnet,
    preset_synsets,
    removal_lemmas,
)


@pytest.fixture(scope="module")
def reader():
    try:
        return load_wordnet()
    except WordNetNotFoundError as error:
        pytest.skip(f"WordNet 3.0 is not installed ({error})")


@pytest.fixture(scope="module")
def cat_filter(reader):
    return PhraseFilter.from_synsets(["cat.n.01"])


def test_removing_cat_drops_its_hyponyms_and_inflections(reader, cat_filter):
    lemmas = removal_lemmas(["cat.n.01"], reader)
    assert {"cat", "tabby", "house cat", "wildcat"} <= lemmas
    assert cat_filter("a tabby")
    assert cat_filter("black cats on the sofa")  # "cats" is lemmatised to "cat"
    assert cat_filter("small house cat")  # multi-word lemma
    assert not cat_filter("a car")
    assert not cat_filter("catalog on table")
    # In WordNet a kitten is a young_mammal, not a hyponym of cat.n.01, so the released rule keeps it.
    assert not cat_filter("kitten sleeping")


def test_presets_follow_the_papers_splits(reader):
    assert preset_synsets("pascal-unseen-2") == ("cattle.n.01", "motorcycle.n.01")
    assert len(preset_synsets("pascal-unseen-10")) == 10 and preset_synsets("pascal-unseen-10")[-1] == "pot_plant.n.01"
    assert preset_synsets("pascal-5i-2") == ("table.n.02", "dog.n.01", "horse.n.01", "motorcycle.n.01", "person.n.01")
    unseen2 = PhraseFilter.from_preset("pascal-unseen-2")
    assert unseen2("cows grazing") and unseen2("red motorbike") and not unseen2("white car")
    fold2 = PhraseFilter.from_preset("pascal-5i-2")
    assert fold2("a man walking") and fold2("women") and fold2("dog") and not fold2("white car")
    assert "person" in removal_lemmas(["person.n.01"], reader) and len(removal_lemmas(["person.n.01"], reader)) == 9
    affordances = PhraseFilter.from_preset("affordances")
    assert affordances("person riding horse") and not affordances("horse")
    assert set(PRESETS) >= {"pascal-unseen-6", "pascal-5i-0", "affordances"}
    with pytest.raises(ValueError, match="unknown class-removal preset"):
        PhraseFilter.from_preset("pascal-unseen-3")
    with pytest.raises(ValueError, match="unknown WordNet synset 'unicorn.n.07'"):
        removal_lemmas(["unicorn.n.07"], reader)


def test_filter_removes_phrases_from_phrasecut_plus(reader, tmp_path):
    train = PhraseCut(write_phrasecut(tmp_path, 20, seed=2, size=(48, 64)), "train")
    dataset = PhraseCutPlus(train, image_size=32, exclude_phrase=PhraseFilter.from_synsets(["circle.n.01"]))
    assert any("circle" in phrase for phrase in train.phrases)
    assert dataset.phrases and not any("circle" in phrase for phrase in dataset.phrases)
    assert len(dataset) == sum("circle" not in phrase for phrase in train.phrases)


def test_missing_wordnet_gives_one_clear_line(tmp_path, monkeypatch):
    with pytest.raises(WordNetNotFoundError, match="apt-get install wordnet-base") as caught:
        load_wordnet(tmp_path)
    assert "\n" not in str(caught.value)
    monkeypatch.setenv(wordnet.WORDNET_DIR_ENV, str(tmp_path))
    with pytest.raises(WordNetNotFoundError, match=str(tmp_path)):
        load_wordnet()


def test_staging_adds_the_lexnames_table_to_a_cache_copy(tmp_path, monkeypatch):
    source = tmp_path / "wn"
    source.mkdir()
    for name in ("data.noun", "index.noun", "noun.exc"):
        (source / name).write_text(f"{name}\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    staged = wordnet._stage_with_lexnames(source)
    assert staged.parent == tmp_path / "cache" / "clipseg"
    assert (staged / "data.noun").read_text() == "data.noun\n"
    lines = (staged / "lexnames").read_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[5] == "05\tnoun.animal\t1" and lines[44] == "44\tadj.ppl\t3"
    (source / "data.noun").write_text("changed\n")
    assert (wordnet._stage_with_lexnames(source) / "data.noun").read_text() == "changed\n"
