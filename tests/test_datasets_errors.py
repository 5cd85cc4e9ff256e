"""Every recipe answers a bad source folder or metadata file with one clear MuzarrError."""

from __future__ import annotations

import re

import pytest
from helpers_datasets import fma_track, write_annotations_final, write_tracks_csv

from pipeline.datasets import get_recipe
from pipeline.datasets.csvlist import index_csv
from pipeline.datasets.fma import index_fma
from pipeline.datasets.folder import index_folder
from pipeline.datasets.gtzan import index_gtzan
from pipeline.datasets.mtat import index_mtat
from pipeline.errors import MuzarrError

RECIPES = ["mtat", "gtzan", "fma", "jamendo", "folder", "csv"]


@pytest.mark.parametrize("name", RECIPES)
def test_missing_root(tmp_path, name):
    with pytest.raises(MuzarrError, match=r"dataset folder .*/nowhere does not exist: expected "):
        get_recipe(name)(tmp_path / "nowhere")


@pytest.mark.parametrize("name", RECIPES)
def test_root_is_a_file(tmp_path, name):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(MuzarrError, match=r"dataset root .*file.txt is a file, not a folder"):
        get_recipe(name)(tmp_path / "file.txt")


@pytest.mark.parametrize("name, message", [
    ("mtat", r"no annotations_final.csv in .*: expected the MagnaTagATune annotations \(tab-separated, quoted\) "
             r"beside the folders 0..f; download with `pipe download mtat --to .*`"),
    ("gtzan", r"no GTZAN genre folders in .* \(it holds nothing\): expected the 10 genre folders \(blues, classical"),
    ("fma", r"no fma_small folder in .*: expected fma_small/<id\[:3\]>/<id:06d>.mp3 .*pipe download fma_small"),
    ("jamendo", r"no MTG-Jamendo metadata in .*: expected one of data, mtg-jamendo-dataset/data, "
                r"mtg-jamendo-dataset-\*/data there .*; download with `pipe download jamendo --to .*`"),
    ("folder", r"no audio files under .*: expected audio files in class folders"),
    ("csv", r"no manifest manifest.csv in .*: expected a CSV with a 'path' column"),
])
def test_empty_root(tmp_path, name, message):
    with pytest.raises(MuzarrError, match=message):
        get_recipe(name)(tmp_path)


# ----------------------------------------------------------------------------- MTAT


def mtat_root(tmp_path, rows=(("1", [1, 0], "0/a.mp3"), ("2", [0, 1], "c/b.mp3")), names=("x", "y")):
    write_annotations_final(tmp_path / "annotations_final.csv", list(rows), list(names))
    (tmp_path / "0").mkdir()
    return tmp_path


def test_mtat_without_audio_folders(tmp_path):
    write_annotations_final(tmp_path / "annotations_final.csv", [("1", [1], "0/a.mp3")], ["x"])
    with pytest.raises(MuzarrError, match=r"no audio folders 0..f in .*: expected the MagnaTagATune MP3 folders "
                                          r"beside annotations_final.csv \(unzip mp3.zip there\)"):
        index_mtat(tmp_path)


def test_mtat_comma_separated_file(tmp_path):
    (tmp_path / "0").mkdir()
    (tmp_path / "annotations_final.csv").write_text("clip_id,x,mp3_path\n1,0,0/a.mp3\n")
    with pytest.raises(MuzarrError, match=r"has columns \['clip_id,x,mp3_path'\].*expected a tab-separated header"):
        index_mtat(tmp_path)


def test_mtat_empty_annotations(tmp_path):
    (tmp_path / "0").mkdir()
    (tmp_path / "annotations_final.csv").write_text("")
    with pytest.raises(MuzarrError, match=r"is not a readable MagnaTagATune annotations file"):
        index_mtat(tmp_path)


def test_mtat_header_only(tmp_path):
    root = mtat_root(tmp_path, rows=())
    with pytest.raises(MuzarrError, match=r"has a header but no clips: expected 25,863 rows"):
        index_mtat(root, tags=2)


def test_mtat_bad_tag_value(tmp_path):
    root = mtat_root(tmp_path, rows=(("1", [1, 0], "0/a.mp3"), ("2", [0, 2], "c/b.mp3")))
    with pytest.raises(MuzarrError, match=r"line 3: tag 'y' of clip_id '2' is '2', expected \"0\" or \"1\""):
        index_mtat(root, tags=2)


def test_mtat_path_outside_the_folders(tmp_path):
    root = mtat_root(tmp_path, rows=(("1", [1, 0], "0/a.mp3"), ("7", [0, 1], "g/b.mp3")))
    with pytest.raises(MuzarrError, match=r"line 3: mp3_path 'g/b.mp3' of clip_id '7' is not under one of the folders"):
        index_mtat(root, tags=2)


def test_mtat_duplicate_clip_id(tmp_path):
    root = mtat_root(tmp_path, rows=(("1", [1, 0], "0/a.mp3"), ("1", [0, 1], "c/b.mp3")))
    with pytest.raises(MuzarrError, match=r"line 3: clip_id '1' appears twice"):
        index_mtat(root, tags=2)


@pytest.mark.parametrize("tags", [0, 3, 2.5])
def test_mtat_bad_tag_count(tmp_path, tags):
    with pytest.raises(MuzarrError, match=re.escape(f"tags={tags!r} must be an integer from 1 to 2")):
        index_mtat(mtat_root(tmp_path), tags=tags)


@pytest.mark.parametrize("split", [(7000, 1500), (10, -1, 1), (0.5, 0.2, 0.3)])
def test_mtat_bad_random_split(tmp_path, split):
    with pytest.raises(MuzarrError, match=r"random_split=.* must be three non-negative clip counts"):
        index_mtat(mtat_root(tmp_path), tags=2, random_split=split)


# ----------------------------------------------------------------------------- GTZAN


def test_gtzan_wrong_layout(tmp_path):
    (tmp_path / "songs" / "rock").mkdir(parents=True)
    with pytest.raises(MuzarrError, match=r"no GTZAN genre folders in .* \(it holds \['songs'\]\): expected .*"
                                          r"genres_original/<genre>/<genre>.000NN.wav \(Kaggle\)"):
        index_gtzan(tmp_path)


def test_gtzan_genre_folders_without_audio(tmp_path):
    (tmp_path / "genres_original" / "rock").mkdir(parents=True)
    (tmp_path / "genres_original" / "rock" / "notes.txt").write_text("x")
    with pytest.raises(MuzarrError, match=r"the genre folders in .*genres_original hold no audio files"):
        index_gtzan(tmp_path)


@pytest.fixture()
def gtzan_root(tmp_path):
    (tmp_path / "genres_original" / "rock").mkdir(parents=True)
    (tmp_path / "genres_original" / "rock" / "rock.00000.wav").write_bytes(b"")
    return tmp_path


def write_filtered(folder, train="rock/rock.00000.wav\n", valid="", test=""):
    folder.mkdir(exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"{name}_filtered.txt").write_text(text)
    return folder


def test_gtzan_filtered_dir_missing_a_list(gtzan_root):
    (gtzan_root / "splits").mkdir()
    (gtzan_root / "splits" / "train_filtered.txt").write_text("rock/rock.00000.wav\n")
    with pytest.raises(MuzarrError, match=r"no valid_filtered.txt in .*splits: filtered_dir must hold "
                                          r"train_filtered.txt, valid_filtered.txt, test_filtered.txt"):
        index_gtzan(gtzan_root, filtered_dir=gtzan_root / "splits")


def test_gtzan_filtered_bad_line(gtzan_root):
    splits = write_filtered(gtzan_root / "splits", valid="rock/rock.00001.wav\npolka/polka.00001.wav\n")
    with pytest.raises(MuzarrError, match=r"valid_filtered.txt line 2: 'polka/polka.00001.wav' is not "
                                          r"'<genre>/<file>' with a GTZAN genre"):
        index_gtzan(gtzan_root, filtered_dir=splits)


def test_gtzan_filtered_clip_in_two_lists(gtzan_root):
    splits = write_filtered(gtzan_root / "splits", test="\nrock/rock.00000.wav\n")
    message = r"test_filtered.txt line 2: 'rock/rock.00000.wav' is already in the train list"
    with pytest.raises(MuzarrError, match=message):
        index_gtzan(gtzan_root, filtered_dir=splits)


def test_gtzan_same_clip_in_two_formats(gtzan_root):
    (gtzan_root / "genres_original" / "rock" / "rock.00000.au").write_bytes(b"")
    with pytest.raises(MuzarrError, match=r"GTZAN clips .*rock.00000.au.*rock.00000.wav.* share a name"):
        index_gtzan(gtzan_root)


@pytest.mark.parametrize("sizes, message", [
    ((0.8, 0.2), r"must be three non-negative fractions"),
    ((0.8, 0.3, -0.1), r"must be three non-negative fractions"),
    ((0.8, 0.1, 0.2), r"must sum to 1 \(they sum to 1.1\)"),
])
def test_bad_split_sizes(gtzan_root, sizes, message):
    with pytest.raises(MuzarrError, match=re.escape(f"split_sizes={sizes!r} ") + message):
        index_gtzan(gtzan_root, split_sizes=sizes)
    with pytest.raises(MuzarrError, match=message):
        index_folder(gtzan_root, split_sizes=sizes)


# ----------------------------------------------------------------------------- FMA


@pytest.fixture()
def fma_root(tmp_path):
    write_tracks_csv(tmp_path / "fma_metadata" / "tracks.csv", {10: fma_track("Pop", "training", "small", "Freeway")})
    (tmp_path / "fma_small" / "000").mkdir(parents=True)
    return tmp_path


def test_fma_no_metadata(tmp_path):
    (tmp_path / "fma_small").mkdir()
    with pytest.raises(MuzarrError, match=r"no fma_metadata/tracks.csv in .*: unzip fma_metadata.zip beside fma_small/ "
                                          r"or pass metadata=<path of tracks.csv>"):
        index_fma(tmp_path)


def test_fma_metadata_path_missing(fma_root):
    with pytest.raises(MuzarrError, match=r"metadata='.*elsewhere.csv' is not a file"):
        index_fma(fma_root, metadata=fma_root / "elsewhere.csv")


def test_fma_bad_subset(fma_root):
    with pytest.raises(MuzarrError, match=r"subset='tiny' is not an FMA subset; choose one of small, medium, large"):
        index_fma(fma_root, subset="tiny")


def test_fma_single_header_csv(fma_root):
    (fma_root / "fma_metadata" / "tracks.csv").write_text("track_id,genre_top,split,subset\n10,Pop,training,small\n")
    with pytest.raises(MuzarrError, match=r"tracks.csv.*(not a readable FMA tracks.csv|has no column).*two-row header"):
        index_fma(fma_root)


def test_fma_raw_tracks_instead_of_tracks(fma_root):
    raw = ",track,track\n,title,genre_top\ntrack_id,,\n10,Freeway,Pop\n"
    (fma_root / "fma_metadata" / "tracks.csv").write_text(raw)
    with pytest.raises(MuzarrError, match=r"has no column\(s\) \[\('set', 'subset'\), \('set', 'split'\)\]"):
        index_fma(fma_root)


def test_fma_no_track_of_the_subset(fma_root):
    (fma_root / "fma_medium").mkdir()
    write_tracks_csv(fma_root / "fma_metadata" / "tracks.csv", {3: fma_track(None, "training", "large", "x")})
    with pytest.raises(MuzarrError, match=r"lists no track of subset 'medium' \(subsets found: \['large'\]\)"):
        index_fma(fma_root, subset="medium")


def test_fma_no_audio_present(fma_root):
    with pytest.raises(MuzarrError, match=r"none of the 1 fma_small tracks listed in tracks.csv is in .*fma_small: "
                                          r"expected fma_small/<id\[:3\]>/<id:06d>.mp3 \(e.g. 000/000010.mp3\)"):
        index_fma(fma_root)


def test_fma_unknown_split_value(fma_root):
    write_tracks_csv(fma_root / "fma_metadata" / "tracks.csv", {10: fma_track("Pop", "dev", "small", "x")})
    message = r"\('set', 'split'\) has values \['dev'\]; expected training/validation/test"
    with pytest.raises(MuzarrError, match=message):
        index_fma(fma_root)


# ----------------------------------------------------------------------------- folder


def test_folder_only_non_audio(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "a" / "._hidden.wav").write_bytes(b"")
    message = r"no audio files under .* with an extension in .wav, .mp3.*\(case-insensitive\)"
    with pytest.raises(MuzarrError, match=message):
        index_folder(tmp_path)


def test_folder_no_extensions(tmp_path):
    with pytest.raises(MuzarrError, match=r"extensions=\(\) lists no audio extension"):
        index_folder(tmp_path, extensions=())


# ----------------------------------------------------------------------------- csv


def csv_root(tmp_path, text, name="manifest.csv"):
    (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("text, message", [
    ("file,label\na.wav,x\n", r"has no 'path' column \(columns: \['file', 'label'\]\)"),
    ("path,label,tags\na.wav,x,y\n", r"has both 'label' and 'tags'"),
    ("path,genre\na.wav,x\n", r"has neither 'label' nor 'tags' \(columns: \['path', 'genre'\]\)"),
    ("path,label\n", r"has a header but no rows"),
    ("", r"is not a readable CSV"),
    ("path,label\na.wav,\nb.wav,\n", r"every label cell is empty"),
    ("path,tags\na.wav,\n", r"every tags cell is empty"),
    ("path,label\na.wav,x\n../b.wav,y\n", r"manifest.csv line 3: path '../b.wav' escapes the dataset root .* '..'"),
    ("path,label\na/../../b.wav,y\n", r"manifest.csv line 2: path 'a/../../b.wav' escapes the dataset root"),
    ("path,label\n/etc/passwd,y\n", r"manifest.csv line 2: absolute path '/etc/passwd' is outside the dataset root"),
    ("path,label\na.wav,x\n,y\n", r"manifest.csv line 3: empty path"),
    ("path,label\n.,x\n", r"manifest.csv line 2: path '.' names the dataset root itself"),
    ("path,label\na.wav,x\n./a.wav,y\n", r"manifest.csv line 3: path 'a.wav' is already listed on manifest.csv line 2"),
    ("path,label,clip_id\na.wav,x,k\nb.wav,y,k\n", r"line 3: clip_id 'k' is already used on manifest.csv line 2"),
    ("path,label,clip_id\na.wav,x,\n", r"line 2: empty clip_id"),
    ("path,label,split\na.wav,x,train\nb.wav,y,validation\n",
     r"line 3: split 'validation' is not one of train, valid, test \(or empty\)"),
    # issue #21 item 13: pandas took the first field of rows one field too long as their index (every value
    # shifted: "path 'rock' is already listed"), and filled rows missing trailing fields with empty cells
    ("path,label\nrock/a.wav,rock,x\nrock/b.wav,rock,y\n",
     r"^manifest.csv line 2: 3 fields, more than the 2 columns of the header \(path, label\): quote a value"),
    ("path,label,split\na.wav,x,train\nb.wav\nc.wav,y\n",
     r"^manifest.csv line 3: 1 field, fewer than the 3 columns of the header \(path, label, split\): give every row"),
    ("path,label\n\na.wav,x\n\"b\nc.wav\",y\nd.wav,y,z\n", r"^manifest.csv line 6: 3 fields, more than"),  # lines as written
    # issue #21 item 14: a second label column was renamed label.1 and kept as metadata
    ("path,label,label\na.wav,x,y\n", r"^manifest.csv line 1: column 'label' appears more than once in the header"),
])
def test_csv_bad_manifest(tmp_path, text, message):
    with pytest.raises(MuzarrError, match=message):
        index_csv(csv_root(tmp_path, text))


def test_csv_absolute_path_of_a_sibling_folder(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    sibling = tmp_path / "data2" / "a.wav"
    with pytest.raises(MuzarrError, match=r"line 2: absolute path '.*data2/a.wav' is outside the dataset root"):
        index_csv(csv_root(root, f"path,label\n{sibling},x\n"))


def test_csv_empty_separator(tmp_path):
    with pytest.raises(MuzarrError, match=r"separator='' cannot split the tags column"):
        index_csv(csv_root(tmp_path, "path,tags\na.wav,x\n"), separator="")


def test_mtat_audio_folders_one_level_down(tmp_path):
    write_annotations_final(tmp_path / "annotations_final.csv", [("1", [1], "0/a.mp3")], ["x"])
    for folder in "0f":
        (tmp_path / "mp3" / folder).mkdir(parents=True)
    with pytest.raises(MuzarrError, match=r"no audio folders 0..f in .*: expected the MagnaTagATune MP3 folders beside "
                                          r"annotations_final.csv \(they seem to be in .*/mp3: move them up\)"):
        index_mtat(tmp_path)
