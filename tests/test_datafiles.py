"""Reading data files: every format, labels as names or ids, and bad input reported with file and line."""

import gzip
import io
import json

import pytest

from ltc_fast.app.datafiles import DataFileError, read_label_names, read_labeled, read_texts


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def _jsonl(path, rows):
    return _write(path, "".join(json.dumps(row) + "\n" for row in rows))


def test_jsonl_with_names_builds_a_sorted_label_set(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", [{"text": "good day", "labels": ["joy", "love"]},
                                         {"text": "bad food", "labels": []},
                                         {"text": "the fear", "labels": "fear", "extra": 1}])
    data = read_labeled(path)
    assert data.label_names == ["fear", "joy", "love"]
    assert data.texts == ["good day", "bad food", "the fear"]
    assert data.labels == [[1, 2], [], [0]]


def test_jsonl_ids_index_a_given_label_set(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", [{"text": "x", "labels": [2, 0]}, {"text": "y", "labels": ["b"]}])
    assert read_labeled(path, ["a", "b", "c"]).labels == [[2, 0], [1]]
    ids_only = _jsonl(tmp_path / "ids.jsonl", [{"text": "x", "labels": [3]}])
    assert read_labeled(ids_only).label_names == ["LABEL_0", "LABEL_1", "LABEL_2", "LABEL_3"]


@pytest.mark.parametrize("suffix,delimiter", [(".csv", ","), (".tsv", "\t")])
def test_csv_and_tsv_with_a_header_and_a_label_separator(tmp_path, suffix, delimiter):
    rows = [["id", "text", "labels"], ["1", "good day", "joy|love"], ["2", "bad, sad food", ""], ["3", "calm", "2"]]
    lines = []
    for row in rows:
        cells = [f'"{cell}"' if delimiter in cell else cell for cell in row]
        lines.append(delimiter.join(cells))
    path = _write(tmp_path / f"a{suffix}", "\n".join(lines) + "\n")
    data = read_labeled(path, ["joy", "fear", "love"], label_separator="|")
    assert data.texts == ["good day", "bad, sad food", "calm"]
    assert data.labels == [[0, 2], [], [2]]


def test_goemotions_tsv_gzipped_and_plain(tmp_path):
    content = "so happy\t17,20\teabc\nwhy\t2\tedef\n"
    plain = _write(tmp_path / "g.tsv", content)
    packed = tmp_path / "g.tsv.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write(content)
    names = [f"e{i}" for i in range(28)]
    for path in (plain, str(packed)):
        data = read_labeled(path, names)
        assert data.texts == ["so happy", "why"] and data.labels == [[17, 20], [2]]


def test_the_bundled_goemotions_files_read_with_their_label_file():
    names = read_label_names("ltc_fast/app/bundled/goemotions/labels.txt")
    data = read_labeled("ltc_fast/app/bundled/goemotions/dev.tsv.gz", names)
    assert len(names) == 28 and len(data) > 5000
    assert all(labels and max(labels) < 28 for labels in data.labels)


def test_single_label_needs_exactly_one_label(tmp_path):
    path = _jsonl(tmp_path / "s.jsonl", [{"text": "x", "labels": "a"}, {"text": "y", "labels": ["a", "b"]}])
    with pytest.raises(DataFileError, match=r"s\.jsonl, line 2: single-label data needs exactly one label"):
        read_labeled(path, problem_type="single")
    ok = _jsonl(tmp_path / "ok.jsonl", [{"text": "x", "labels": "b"}, {"text": "y", "labels": ["a"]}])
    data = read_labeled(ok, problem_type="single")
    assert data.targets("single") == [1, 0]


@pytest.mark.parametrize("name,content,message", [
    ("bad.jsonl", '{"text": "a", "labels": ["joy"]}\n{"text": "b", "labels": [}\n', r"line 2: malformed JSON"),
    ("bad.jsonl", '{"text": "a", "labels": ["joy"]}\n["b"]\n', r"line 2: malformed line: expected a JSON object"),
    ("bad.jsonl", '{"text": "a", "labels": ["joy"]}\n{"text": "  ", "labels": ["joy"]}\n', r"line 2: empty text"),
    ("bad.jsonl", '{"text": "a", "labels": ["joy"]}\n{"text": "b", "labels": ["anger"]}\n',
     r"line 2: unknown label 'anger'"),
    ("bad.jsonl", '{"text": "a", "labels": [7]}\n', r"line 1: label id 7 is out of range"),
    ("bad.jsonl", '{"sentence": "a", "labels": ["joy"]}\n', r"line 1: unknown column 'text'"),
    ("bad.csv", "text,labels\nfine,joy\ntoo,many,fields\n", r"line 3: malformed line: 3 fields"),
    ("bad.csv", "sentence,labels\nfine,joy\n", r"line 1: unknown column 'text'"),
    ("bad.csv", "text,labels\nfine,joy\n,joy\n", r"line 3: empty text"),
    ("bad.tsv", "so happy\t1\tid\nbad\t1,x\tid\n", r"line 2: malformed line: expected 'text<TAB>comma-separated label ids"),
    ("bad.txt", "text\n", r"cannot tell the format from the file name"),
])
def test_bad_input_names_file_and_line(tmp_path, name, content, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(DataFileError, match=message) as caught:
        read_labeled(path, ["joy", "fear"])
    assert str(caught.value).startswith(path), "the message starts with the file"


def test_mixed_names_and_ids_without_a_label_file(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", [{"text": "a", "labels": ["joy"]}, {"text": "b", "labels": [1]}])
    with pytest.raises(DataFileError, match="line 2: labels mix names and ids"):
        read_labeled(path)


def test_label_file_errors(tmp_path):
    assert read_label_names(_write(tmp_path / "l.txt", "joy\nfear\n\n")) == ["joy", "fear"]
    with pytest.raises(DataFileError, match=r"d\.txt, line 3: duplicate label name 'joy' \(first on line 1\)"):
        read_label_names(_write(tmp_path / "d.txt", "joy\nfear\njoy\n"))
    with pytest.raises(DataFileError, match=r"e\.txt, line 2: empty label name"):
        read_label_names(_write(tmp_path / "e.txt", "joy\n\nfear\n"))
    with pytest.raises(DataFileError, match="no such file"):
        read_label_names(str(tmp_path / "missing.txt"))


def test_read_texts_from_lines_jsonl_csv_and_stdin(tmp_path, monkeypatch):
    assert read_texts(_write(tmp_path / "t.txt", "one\ntwo\n")) == ["one", "two"]
    assert read_texts(_jsonl(tmp_path / "t.jsonl", [{"text": "a", "id": 1}, {"text": "b"}])) == ["a", "b"]
    assert read_texts(_write(tmp_path / "t.csv", "id,body\n1,hello\n"), text_column="body") == ["hello"]
    monkeypatch.setattr("sys.stdin", io.StringIO('{"text": "from stdin"}\n'))
    assert read_texts("-", fmt="jsonl") == ["from stdin"]
    monkeypatch.setattr("sys.stdin", io.StringIO("first\nsecond\n"))
    assert read_texts("-") == ["first", "second"]
    with pytest.raises(DataFileError, match=r"t2\.txt, line 2: empty text"):
        read_texts(_write(tmp_path / "t2.txt", "one\n\nthree\n"))
