"""Dataset recipes against the real fixtures and metadata files written in the real formats."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_datasets import (
    MTAT_BROKEN,
    MTAT_TAG_COLUMNS,
    MTAT_TOP50,
    fma_track,
    read_mtat_fixture,
    synthesise_mtat_tags,
    write_annotations_final,
    write_tracks_csv,
)

from pipeline.datasets import get_recipe
from pipeline.datasets.csvlist import index_csv
from pipeline.datasets.fma import index_fma
from pipeline.datasets.folder import index_folder
from pipeline.datasets.gtzan import GENRES, index_gtzan
from pipeline.datasets.mtat import index_mtat

MTAT_CLIP = "e/joram-moments_of_clarity-08-solipsism-59-88.mp3"


def counts(column: pd.Series) -> dict:
    return {k: int(v) for k, v in column.value_counts(dropna=True).sort_index().items()}


def touch(root: Path, relative: str, data: bytes = b"") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------- MTAT


@pytest.fixture(scope="module")
def mtat_full(tmp_path_factory, fixtures_dir):
    """A full-size MTAT root: 25,863-row annotations_final.csv + the one real clip (symlink)."""
    root = tmp_path_factory.mktemp("mtat")
    index, truth = read_mtat_fixture(fixtures_dir / "mtat")
    tags = synthesise_mtat_tags(index, truth, seed=0)
    rows = list(zip(index["clip_id"].astype(str), tags, index["path"]))
    write_annotations_final(root / "annotations_final.csv", rows, MTAT_TAG_COLUMNS)
    (root / "e").mkdir()
    os.symlink(fixtures_dir / "mtat" / MTAT_CLIP, root / MTAT_CLIP)
    return root, index, tags, index_mtat(root)


def test_write_annotations_final_exact_format(tmp_path):
    path = write_annotations_final(tmp_path / "a.csv", [("2", [0, 1], "f/x-30-59.mp3")], ["no voice", "singer"])
    assert path.read_text() == '"clip_id"\t"no voice"\t"singer"\t"mp3_path"\n"2"\t"0"\t"1"\t"f/x-30-59.mp3"\n'


@pytest.mark.slow
def test_mtat_full_size_dieleman_counts(mtat_full):
    _, _, _, ix = mtat_full
    assert len(ix) == 25_863
    assert counts(ix.splits["dieleman"]) == {"test": 5_329, "train": 18_709, "valid": 1_825}
    assert ix.splits["dieleman"].isna().sum() == 0
    # after the three zero-byte clips fail at decode: the published 18,706 / 1,825 / 5,329
    kept = ~ix.clips["clip_id"].isin(MTAT_BROKEN).to_numpy()
    assert counts(ix.splits["dieleman"][kept]) == {"test": 5_329, "train": 18_706, "valid": 1_825}


@pytest.mark.slow
def test_mtat_full_size_clean_counts(mtat_full):
    _, _, _, ix = mtat_full
    # valid/test carry the real top-50 labels: the published 1,529 / 4,332; train is synthetic
    # (15,244 tagged + the 3 broken clips, tagged too)
    assert counts(ix.splits["clean"]) == {"test": 4_332, "train": 15_247, "valid": 1_529}
    kept = ~ix.clips["clip_id"].isin(MTAT_BROKEN).to_numpy()
    assert counts(ix.splits["clean"][kept]) == {"test": 4_332, "train": 15_244, "valid": 1_529}


@pytest.mark.slow
def test_mtat_classes_are_top50_in_frequency_order(mtat_full):
    _, index, tags, ix = mtat_full
    assert ix.task == "multilabel"
    assert ix.classes == MTAT_TOP50
    columns = [MTAT_TAG_COLUMNS.index(t) for t in MTAT_TOP50]
    assert ix.labels.dtype == np.uint8
    np.testing.assert_array_equal(ix.labels, tags[:, columns])
    assert ix.info["n_tags_available"] == 188
    assert list(ix.info["tag_counts"].values())[:3] == [5000, 4910, 4820]
    assert ix.info["tag_counts"]["choral"] == 590


@pytest.mark.slow
def test_mtat_rows_ids_and_paths(mtat_full):
    root, index, _, ix = mtat_full
    assert ix.root == str(root.resolve())
    assert ix.clips["clip_id"].tolist()[:3] == ["2", "6", "10"]
    assert ix.clips["path"].iloc[0] == "f/american_bach_soloists-j_s__bach_solo_cantatas-01-bwv54__i_aria-30-59.mp3"
    assert ix.clips["clip_id"].tolist() == index["clip_id"].astype(str).tolist()
    assert all(isinstance(c, str) for c in ix.clips["clip_id"])
    # the real clip: clip_id 37386, test folder, real top-50 label "techno" only
    row = ix.clips.index[ix.clips["clip_id"] == "37386"][0]
    assert ix.clips["path"][row] == MTAT_CLIP
    assert [ix.classes[i] for i in np.flatnonzero(ix.labels[row])] == ["techno"]
    assert (ix.splits["dieleman"][row], ix.splits["clean"][row]) == ("test", "test")
    assert ix.info["missing_audio"] == 25_862
    json.dumps(ix.info)  # the build stores it in the store's attributes


@pytest.mark.slow
def test_mtat_broken_clips_stay_in_the_index(mtat_full):
    _, _, _, ix = mtat_full
    broken = ix.clips[ix.clips["clip_id"].isin(MTAT_BROKEN)]
    assert broken["path"].tolist() == [
        "6/norine_braun-now_and_zen-08-gently-117-146.mp3",
        "8/jacob_heringman-josquin_des_prez_lute_settings-19-gintzler__pater_noster-204-233.mp3",
        "9/american_baroque-dances_and_suites_of_rameau_and_couperin-25-le_petit_rien_xiveme_ordre_couperin-88-117.mp3",
    ]
    assert ix.splits["dieleman"][broken.index].tolist() == ["train", "train", "train"]


@pytest.mark.slow
def test_mtat_random_split_is_seeded_and_disjoint(mtat_full):
    root, _, _, ix = mtat_full
    assert counts(ix.splits["random"]) == {"test": 1_500, "train": 7_000, "valid": 1_500}
    assert ix.splits["random"].isna().sum() == 25_863 - 10_000
    again = index_mtat(root)
    assert ix.splits["random"].tolist() == again.splits["random"].tolist()
    other = index_mtat(root, seed=1)
    assert ix.splits["random"].tolist() != other.splits["random"].tolist()
    assert counts(other.splits["random"]) == {"test": 1_500, "train": 7_000, "valid": 1_500}


@pytest.mark.slow
def test_mtat_fewer_tags_keeps_clean_on_top50(mtat_full):
    root, _, tags, ix = mtat_full
    ten = index_mtat(root, tags=10)
    assert ten.classes == MTAT_TOP50[:10]
    assert ten.labels.shape == (25_863, 10)
    assert ten.splits["clean"].tolist() == ix.splits["clean"].tolist()
    everything = index_mtat(root, tags=188)
    assert everything.classes[:50] == MTAT_TOP50 and set(everything.classes) == set(MTAT_TAG_COLUMNS)


def make_small_mtat(root: Path, tag_values: list[list[int]], tag_names: list[str], *, newline: str = "\n") -> Path:
    folders = "0123456789abcdef"
    rows = [(str(i), values, f"{folders[i % 16]}/clip-{i}.mp3") for i, values in enumerate(tag_values)]
    write_annotations_final(root / "annotations_final.csv", rows, tag_names, newline=newline)
    (root / "0").mkdir(exist_ok=True)
    return root


def test_mtat_ties_keep_column_order(tmp_path):
    # counts: a=2, b=3, c=2, d=3 -> b, d (ties: earlier column first), then a, c
    values = [[1, 1, 0, 1], [1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0]]
    ix = index_mtat(make_small_mtat(tmp_path, values, ["a", "b", "c", "d"]), tags=4)
    assert ix.classes == ("b", "d", "a", "c")
    np.testing.assert_array_equal(ix.labels, [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 1], [0, 0, 0, 0]])
    assert ix.info["tag_counts"] == {"b": 3, "d": 3, "a": 2, "c": 2}
    assert ix.splits["dieleman"].tolist() == ["train", "train", "train", "train"]
    assert ix.splits["clean"].tolist() == ["train", "train", "train", None]


def test_mtat_random_split_scaled_down_when_too_small(tmp_path):
    values = [[i % 2, 1] for i in range(40)]
    ix = index_mtat(make_small_mtat(tmp_path, values, ["x", "y"], newline="\r\n"), tags=2)
    # 7000/1500/1500 of 10,000 scaled to 40 clips: 28 / 6 / 6
    assert counts(ix.splits["random"]) == {"test": 6, "train": 28, "valid": 6}
    assert ix.info["random_split"] == [28, 6, 6]
    assert "scaled down proportionally" in ix.info["random_split_scaled"]
    assert counts(ix.splits["dieleman"]) == {"test": 6, "train": 32, "valid": 2}
    assert ix.clips["path"].iloc[12] == "c/clip-12.mp3"


def test_mtat_through_registry_and_tables(tmp_path):
    ix = get_recipe("mtat")(make_small_mtat(tmp_path, [[1, 0], [0, 0]], ["x", "y"]), tags=2)
    labels = ix.labels_table()
    assert labels.columns.tolist() == ["clip_id", "x", "y"]
    assert labels.values.tolist() == [["0", 1, 0], ["1", 0, 0]]
    assert ix.splits_table()["clean"].tolist() == ["train", None]


# ----------------------------------------------------------------------------- GTZAN

GTZAN_FIXTURE_IDS = ["blues.00000", "classical.00000", "country.00000", "jazz.00000", "jazz.00054", "rock.00000"]


def test_gtzan_fixture(fixtures_dir):
    ix = index_gtzan(fixtures_dir / "gtzan", filtered_dir=fixtures_dir / "gtzan" / "splits")
    assert ix.task == "multiclass"
    assert ix.classes == ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
    assert ix.clips["clip_id"].tolist() == GTZAN_FIXTURE_IDS
    assert ix.clips["path"].tolist() == [f"genres_original/{c.split('.')[0]}/{c}.wav" for c in GTZAN_FIXTURE_IDS]
    assert ix.labels.tolist() == [0, 1, 2, 5, 5, 9]
    assert ix.labels.dtype == np.int16
    # jazz.00054 (not a WAV file) stays; the real filtered lists put it in train
    assert ix.splits["filtered"].tolist() == ["valid", "valid", "valid", "train", "train", "train"]
    assert ix.splits["random"].tolist() == ["train"] * 6
    assert ix.info["layout"] == "genres_original"
    assert ix.info["filtered_listed_not_found"] == 930 - 6
    assert ix.info["clips_per_genre"]["jazz"] == 2
    json.dumps(ix.info)


def test_gtzan_without_filtered_dir_has_random_only(fixtures_dir):
    ix = index_gtzan(fixtures_dir / "gtzan" / "genres_original")
    assert ix.splits.columns.tolist() == ["random"]
    assert ix.clips["path"].tolist()[0] == "blues/blues.00000.wav"
    assert ix.info["layout"] == "."


@pytest.fixture(scope="module")
def gtzan_full(tmp_path_factory):
    """Full-size GTZAN trees (empty files: recipes never open audio), Kaggle and original layouts."""
    root = tmp_path_factory.mktemp("gtzan")
    for genre in GENRES:
        for number in range(100):
            touch(root / "kaggle", f"genres_original/{genre}/{genre}.{number:05d}.wav")
            touch(root / "original", f"genres/{genre}/{genre}.{number:05d}.au")
            touch(root / "nested", f"Data/genres_original/{genre}/{genre}.{number:05d}.wav")
    touch(root / "kaggle", "genres_original/blues/.DS_Store")
    touch(root / "kaggle", "genres_original/blues/notes.txt")
    (root / "kaggle" / "genres_original" / "images_original").mkdir()
    return root


def test_gtzan_random_split_is_stratified(gtzan_full):
    ix = index_gtzan(gtzan_full / "kaggle")
    assert len(ix) == 1000
    table = pd.crosstab(ix.clips["genre"], ix.splits["random"])
    assert table.to_dict("list") == {"test": [10] * 10, "train": [80] * 10, "valid": [10] * 10}
    assert ix.info["ignored_folders"] == ["images_original"]
    assert ix.splits["random"].tolist() == index_gtzan(gtzan_full / "kaggle").splits["random"].tolist()
    other = index_gtzan(gtzan_full / "kaggle", split_seed=1)
    assert other.splits["random"].tolist() != ix.splits["random"].tolist()
    assert pd.crosstab(other.clips["genre"], other.splits["random"]).to_dict("list")["train"] == [80] * 10
    half = index_gtzan(gtzan_full / "kaggle", split_sizes=(0.5, 0.25, 0.25))
    assert counts(half.splits["random"]) == {"test": 250, "train": 500, "valid": 250}


def test_gtzan_filtered_split_counts(gtzan_full, fixtures_dir):
    splits = fixtures_dir / "gtzan" / "splits"
    for layout in ("kaggle", "original", "nested"):
        ix = index_gtzan(gtzan_full / layout, filtered_dir=splits)
        assert counts(ix.splits["filtered"]) == {"test": 290, "train": 443, "valid": 197}, layout
        assert ix.splits["filtered"].isna().sum() == 70
        assert ix.info["filtered_listed_not_found"] == 0
    original = index_gtzan(gtzan_full / "original", filtered_dir=splits)
    assert original.clips["path"].iloc[0] == "genres/blues/blues.00000.au"
    assert original.info["layout"] == "genres"
    nested = index_gtzan(gtzan_full / "nested")
    assert nested.clips["path"].iloc[0] == "Data/genres_original/blues/blues.00000.wav"


def test_gtzan_partial_folder_keeps_all_ten_classes(tmp_path):
    touch(tmp_path, "genres_original/rock/rock.00003.wav")
    touch(tmp_path, "genres_original/rock/rock.00001.WAV")
    ix = index_gtzan(tmp_path)
    assert ix.classes == GENRES
    assert ix.clips["clip_id"].tolist() == ["rock.00001", "rock.00003"]
    assert ix.labels.tolist() == [9, 9]


# ----------------------------------------------------------------------------- FMA

FMA_TRACKS = {
    2: fma_track("Hip-Hop", "training", "small", "Food", artist__name="AWOL"),
    3: fma_track(None, "training", "large", "Electric Ave"),
    5: fma_track("Hip-Hop", "training", "small", "This World", artist__name="AWOL"),
    10: fma_track("Pop", "training", "small", "Freeway", artist__name="Kurt Vile"),
    20: fma_track("Experimental", "test", "medium", "Spiritual Level"),
    140: fma_track("Folk", "validation", "small", "Queen Of The Wires"),
    141: fma_track("Folk", "test", "small", "Ohio"),
    99134: fma_track("Rock", "training", "small", "(no audio in the real fma_small)"),
}


@pytest.fixture()
def fma_root(tmp_path, fixtures_dir):
    """fma_metadata/tracks.csv in the real format + fma_small with the real clip symlinked."""
    write_tracks_csv(tmp_path / "fma_metadata" / "tracks.csv", FMA_TRACKS)
    real = fixtures_dir / "fma" / "fma_small" / "000" / "000010.mp3"
    for name in ("000010", "000140", "000141"):
        (tmp_path / "fma_small" / "000").mkdir(parents=True, exist_ok=True)
        os.symlink(real, tmp_path / "fma_small" / "000" / f"{name}.mp3")
    touch(tmp_path, "fma_small/099/099134.mp3")  # zero bytes: kept, fails at decode
    return tmp_path


def test_write_tracks_csv_real_header(tmp_path):
    path = write_tracks_csv(tmp_path / "tracks.csv", {10: FMA_TRACKS[10]})
    lines = path.read_text().splitlines()
    assert lines[0].startswith(",album,album,") and lines[0].endswith(",track")
    assert lines[1].startswith(",comments,date_created,date_released,") and lines[1].endswith(",tags,title")
    assert lines[2] == "track_id" + "," * 52
    assert lines[3].startswith("10,") and lines[3].endswith(",Freeway")
    assert len(lines[0].split(",")) == 53


def test_fma_small(fma_root):
    ix = index_fma(fma_root)
    assert ix.task == "multiclass"
    assert ix.classes == ("Folk", "Hip-Hop", "Pop", "Rock")
    assert ix.clips["clip_id"].tolist() == ["000010", "000140", "000141", "099134"]
    assert ix.clips["path"].tolist() == ["fma_small/000/000010.mp3", "fma_small/000/000140.mp3",
                                         "fma_small/000/000141.mp3", "fma_small/099/099134.mp3"]
    assert ix.clips["track_id"].tolist() == [10, 140, 141, 99134]
    assert ix.clips["genre"].tolist() == ["Pop", "Folk", "Folk", "Rock"]
    assert ix.labels.tolist() == [2, 0, 0, 3]
    assert ix.splits["official"].tolist() == ["train", "valid", "test", "train"]
    assert ix.info["missing_audio"] == 2
    assert ix.info["missing_audio_examples"] == ["000002", "000005"]
    assert ix.info["tracks_in_subset"] == 6
    json.dumps(ix.info)


def test_fma_medium_includes_small(fma_root, fixtures_dir):
    for name in ("000010", "000020"):
        (fma_root / "fma_medium" / "000").mkdir(parents=True, exist_ok=True)
        real = fixtures_dir / "fma" / "fma_small" / "000" / "000010.mp3"
        os.symlink(real, fma_root / "fma_medium" / "000" / f"{name}.mp3")
    ix = index_fma(fma_root, subset="medium")
    assert ix.classes == ("Experimental", "Folk", "Hip-Hop", "Pop", "Rock")
    assert ix.clips["path"].tolist() == ["fma_medium/000/000010.mp3", "fma_medium/000/000020.mp3"]
    assert ix.labels.tolist() == [3, 0]
    assert ix.splits["official"].tolist() == ["train", "test"]
    assert ix.info["missing_audio"] == 5


def test_fma_large_track_without_genre_is_unlabelled(fma_root):
    touch(fma_root, "fma_large/000/000003.mp3")
    touch(fma_root, "fma_large/000/000010.mp3")
    ix = index_fma(fma_root, subset="large")
    assert ix.clips["clip_id"].tolist() == ["000003", "000010"]
    assert ix.classes == ("Experimental", "Folk", "Hip-Hop", "Pop", "Rock")
    assert ix.labels.tolist() == [-1, 3]
    assert ix.clips["genre"].tolist() == [None, "Pop"]
    assert ix.labels_table()["label"].isna().tolist() == [True, False]


def test_fma_root_is_the_audio_folder(fma_root, tmp_path_factory):
    beside = index_fma(fma_root / "fma_small")
    assert beside.clips["path"].tolist()[0] == "000/000010.mp3"
    assert beside.root == str((fma_root / "fma_small").resolve())
    moved = tmp_path_factory.mktemp("elsewhere") / "tracks.csv"
    moved.write_bytes((fma_root / "fma_metadata" / "tracks.csv").read_bytes())
    explicit = index_fma(fma_root, metadata=moved)
    assert explicit.clips["clip_id"].tolist() == ["000010", "000140", "000141", "099134"]
    assert explicit.info["tracks_csv"] == str(moved)


# ----------------------------------------------------------------------------- folder

EDGE_CASES = [
    "mirdata/10161_chorus.wav", "pydub/bach.ogg", "pydub/test-192khz-32bit.flac", "pydub/test1-8bit.wav",
    "pydub/test1_empty.wav", "pydub/wrong_extension.aac", "python-soundfile/mono.wav", "python-soundfile/stereo.wav",
    "scipy/test-1234Hz-le-1ch-10S-20bit-extra.wav", "scipy/test-44100Hz-2ch-32bit-float-be.wav",
    "scipy/test-44100Hz-le-1ch-4bytes-early-eof-no-data.wav", "scipy/test-44100Hz-le-1ch-4bytes-early-eof.wav",
    "scipy/test-44100Hz-le-1ch-4bytes-incomplete-chunk.wav", "scipy/test-44100Hz-le-1ch-4bytes-rf64.wav",
    "scipy/test-48000Hz-2ch-64bit-float-le-wavex.wav", "scipy/test-8000Hz-le-1ch-1byte-ulaw.wav",
    "scipy/test-8000Hz-le-2ch-1byteu.wav", "scipy/test-8000Hz-le-3ch-5S-24bit-inconsistent.wav",
    "scipy/test-8000Hz-le-3ch-5S-24bit.wav",
]


def test_folder_edge_cases_keeps_every_audio_named_file(fixtures_dir):
    ix = index_folder(fixtures_dir / "edge_cases")
    assert ix.clips["path"].tolist() == EDGE_CASES
    assert ix.clips["clip_id"].tolist() == [p.rsplit(".", 1)[0] for p in EDGE_CASES]
    assert ix.classes == ("mirdata", "pydub", "python-soundfile", "scipy")
    assert ix.labels.tolist() == [0, 1, 1, 1, 1, 1, 2, 2] + [3] * 11
    # per class, largest remainder of 0.8/0.1/0.1: 1 -> 1/0/0, 5 -> 4/1/0, 2 -> 2/0/0, 11 -> 9/1/1
    assert pd.crosstab(ix.labels, ix.splits["random"]).to_dict("list") == {
        "test": [0, 0, 0, 1], "train": [1, 4, 2, 9], "valid": [0, 1, 0, 1]}


def test_folder_misc_nested_and_same_stem_files(fixtures_dir):
    ix = index_folder(fixtures_dir / "misc")
    assert len(ix) == 20  # the 5 license .txt files are not audio
    ids = dict(zip(ix.clips["path"], ix.clips["clip_id"]))
    # two files that differ only by extension keep it in their ids
    assert ids["librosa_tests/test1_22050.mp3"] == "librosa_tests/test1_22050.mp3"
    assert ids["librosa_tests/test1_22050.wav"] == "librosa_tests/test1_22050.wav"
    assert ids["librosa_tests/test_audio.ogg"] == "librosa_tests/test_audio.ogg"
    assert ids["librosa_data/sorohanro_-_solo-trumpet-06.hq.ogg"] == "librosa_data/sorohanro_-_solo-trumpet-06.hq"
    assert ids["mirdata/irmas/cla/[cla][cla]0189__2.wav"] == "mirdata/irmas/cla/[cla][cla]0189__2"
    assert ix.classes == ("librosa_data", "librosa_tests", "mirdata", "pydub")
    assert counts(ix.clips["label_name"]) == {"librosa_data": 6, "librosa_tests": 7, "mirdata": 5, "pydub": 2}


def test_folder_unlabelled_root_files_case_and_hidden(tmp_path):
    for name in ("a/x.WAV", "a/deep/y.mp3", "b/z.Flac", "loose.ogg", "a/readme.md", "a/._x.wav", ".git/k.wav"):
        touch(tmp_path, name)
    ix = index_folder(tmp_path)
    assert ix.clips["path"].tolist() == ["a/deep/y.mp3", "a/x.WAV", "b/z.Flac", "loose.ogg"]
    assert ix.clips["clip_id"].tolist() == ["a/deep/y", "a/x", "b/z", "loose"]
    assert ix.classes == ("a", "b")
    assert ix.labels.tolist() == [0, 0, 1, -1]
    assert ix.clips["label_name"].tolist() == ["a", "a", "b", None]
    assert ix.info == {"unlabelled": 1, "skipped_hidden": 1, "extensions": list(ix.info["extensions"])}
    only_mp3 = index_folder(tmp_path, extensions=(".mp3",))
    assert only_mp3.clips["path"].tolist() == ["a/deep/y.mp3"]


def test_folder_split_is_stratified_and_seeded(tmp_path):
    for label, n in (("big", 50), ("small", 20)):
        for i in range(n):
            touch(tmp_path, f"{label}/{i:03d}.wav")
    ix = index_folder(tmp_path)
    assert pd.crosstab(ix.clips["label_name"], ix.splits["random"]).to_dict("list") == {
        "test": [5, 2], "train": [40, 16], "valid": [5, 2]}
    assert index_folder(tmp_path).splits["random"].tolist() == ix.splits["random"].tolist()
    assert index_folder(tmp_path, split_seed=7).splits["random"].tolist() != ix.splits["random"].tolist()


# ----------------------------------------------------------------------------- csv


def test_csv_multiclass_with_given_split(tmp_path):
    (tmp_path / "manifest.csv").write_text(
        "path,label,split,artist\n"
        "rock/a.mp3,rock,train,A\n"
        f"{tmp_path}/jazz/b.wav,jazz,test,B\n"
        "./jazz/../jazz/c.wav,jazz,,C\n"
        "d.flac,,valid,D\n")
    ix = index_csv(tmp_path)
    assert ix.task == "multiclass"
    assert ix.clips.columns.tolist() == ["clip_id", "path", "artist"]
    assert ix.clips["path"].tolist() == ["rock/a.mp3", "jazz/b.wav", "jazz/c.wav", "d.flac"]
    assert ix.clips["clip_id"].tolist() == ["rock/a", "jazz/b", "jazz/c", "d"]
    assert ix.clips["artist"].tolist() == ["A", "B", "C", "D"]
    assert ix.classes == ("jazz", "rock")
    assert ix.labels.tolist() == [1, 0, 0, -1]
    assert ix.splits.columns.tolist() == ["random", "given"]
    assert ix.splits["given"].tolist() == ["train", "test", None, "valid"]
    assert ix.info["missing_audio"] == 4


def test_csv_multilabel_tags_and_clip_ids(tmp_path):
    touch(tmp_path, "audio/1.wav")
    (tmp_path / "list.csv").write_text(
        'clip_id,path,tags\nc1,audio/1.wav,"guitar; slow"\nc2,audio/2.wav,\nc3,audio/3.wav,slow\n')
    ix = index_csv(tmp_path, manifest="list.csv")
    assert ix.task == "multilabel"
    assert ix.clips["clip_id"].tolist() == ["c1", "c2", "c3"]
    assert ix.classes == ("guitar", "slow")
    assert ix.labels.tolist() == [[1, 1], [0, 0], [0, 1]]
    assert ix.labels.dtype == np.uint8
    assert ix.splits.columns.tolist() == ["random"]
    assert ix.info["missing_audio"] == 2
    pipes = tmp_path / "pipes.csv"
    pipes.write_text("path,tags\na.wav,x|y\n")
    assert index_csv(tmp_path, manifest=str(pipes), separator="|").classes == ("x", "y")


def test_csv_random_split_seeded(tmp_path):
    lines = ["path,label"] + [f"{i}.wav,{'a' if i < 30 else 'b'}" for i in range(40)]
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    ix = index_csv(tmp_path)
    assert pd.crosstab(ix.labels, ix.splits["random"]).to_dict("list") == {
        "test": [3, 1], "train": [24, 8], "valid": [3, 1]}
    assert index_csv(tmp_path).splits["random"].tolist() == ix.splits["random"].tolist()
    assert index_csv(tmp_path, split_seed=3).splits["random"].tolist() != ix.splits["random"].tolist()


def test_csv_spreadsheet_export_with_byte_order_mark(tmp_path):
    (tmp_path / "manifest.csv").write_bytes("\ufeffpath,label\r\na.wav,x\r\n".encode())
    ix = index_csv(tmp_path)
    assert ix.clips["path"].tolist() == ["a.wav"]
    assert ix.classes == ("x",)


def test_fma_read_tracks_matches_the_full_pandas_read(tmp_path):
    from pipeline.datasets.fma import COLUMNS, read_tracks

    tricky = {
        2: fma_track("Hip-Hop", "training", "small", 'Food, "live"', artist__bio="<p>two\nlines, a comma</p>"),
        3: fma_track(None, "test", "large", "Electric Ave", track__information="x,y\nz"),
    }
    path = write_tracks_csv(tmp_path / "tracks.csv", tricky)
    ours = read_tracks(path)
    full = pd.read_csv(path, header=[0, 1], index_col=0)[list(COLUMNS)]
    assert ours.index.tolist() == full.index.tolist() == [2, 3]
    assert ours.index.name == "track_id"
    for column in COLUMNS:
        assert ours[column].tolist() == full[column].astype(object).where(full[column].notna(), None).tolist()
    assert ours[("track", "genre_top")].tolist() == ["Hip-Hop", None]
