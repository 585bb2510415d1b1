"""Reading labelled data files and text files for the `ltc-fast` command.

Formats (chosen by the file name, `.gz` allowed, or given explicitly):
* JSONL (`.jsonl`, `.json`): one object per line with a text field and a labels field; labels are a list
  of names or ids (a single name or id is accepted too).
* CSV (`.csv`) / TSV (`.tsv`) with a header row naming the text and labels columns; the labels cell holds
  names or ids joined by a separator (`,` by default).
* The GoEmotions TSV (the bundled data's format): no header, `text <TAB> ids,comma,separated <TAB> id`.

A label written as a name must be in the label set; a label written as an id (an int in JSONL, digits in
CSV/TSV) indexes it. Every error names the file and the line.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import sys
from dataclasses import dataclass

from ..config import MULTI_LABEL, normalize_problem_type

FORMATS = ("auto", "jsonl", "csv", "tsv", "goemotions")
TEXT_FORMATS = ("auto", "lines", "jsonl", "csv", "tsv")
_GOEMOTIONS_IDS = re.compile(r"^\d+(,\d+)*$")


class DataFileError(ValueError):
    """Bad content in a data file; the message starts with `file, line N:`."""

    def __init__(self, path: str, line: int | None, message: str):
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path, self.line = path, line


@dataclass
class LabeledData:
    """Texts, label-index lists (one list per text) and the label names they index."""

    path: str
    texts: list[str]
    labels: list[list[int]]
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def targets(self, problem_type: str) -> list:
        """What `LabelTokenCollator` takes: index lists (multi-label) or class ids (single-label)."""
        if normalize_problem_type(problem_type) == MULTI_LABEL:
            return self.labels
        return [labels[0] for labels in self.labels]


@dataclass
class _Record:
    line: int
    text: str
    labels: list  # raw: names (str) or ids (int, or digit strings from CSV/TSV)


# ----------------------------------------------------------------------------------------------- files
def _open_text(path: str):
    if not os.path.isfile(path):
        raise DataFileError(path, None, "no such file")
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _format_from_name(path: str) -> str | None:
    name = path[:-3] if path.endswith(".gz") else path
    suffix = os.path.splitext(name)[1].lower()
    return {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}.get(suffix)


def read_label_names(path: str) -> list[str]:
    """A label file: one name per line (blank lines at the end ignored)."""
    with _open_text(path) as f:
        lines = f.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names, seen = [], {}
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            raise DataFileError(path, number, "empty label name")
        if name in seen:
            raise DataFileError(path, number, f"duplicate label name {name!r} (first on line {seen[name]})")
        seen[name] = number
        names.append(name)
    if not names:
        raise DataFileError(path, None, "the label file holds no names")
    return names


def _json_records(path, f, text_field, labels_field, need_labels):
    for number, line in enumerate(f, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataFileError(path, number, f"malformed JSON: {error.msg}") from None
        if not isinstance(row, dict):
            raise DataFileError(path, number, f"malformed line: expected a JSON object, got {type(row).__name__}")
        wanted = [text_field] + ([labels_field] if need_labels else [])
        missing = [field for field in wanted if field not in row]
        if missing:
            raise DataFileError(path, number, f"unknown column {missing[0]!r}: the object has fields "
                                              f"{sorted(row)}")
        labels = row.get(labels_field) if need_labels else []
        if labels is None:
            labels = []
        if not isinstance(labels, list):
            labels = [labels]
        for label in labels:
            if isinstance(label, bool) or not isinstance(label, (str, int)):
                raise DataFileError(path, number, f"a label must be a name (string) or an id (int), got {label!r}")
        yield _Record(number, row[text_field], labels)


def _table_records(path, f, delimiter, text_column, labels_column, separator, need_labels):
    reader = csv.reader(f, delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise DataFileError(path, None, "the file is empty")
        wanted = [text_column] + ([labels_column] if need_labels else [])
        for column in wanted:
            if column not in header:
                raise DataFileError(path, 1, f"unknown column {column!r}: the header has columns {header}")
        text_at = header.index(text_column)
        labels_at = header.index(labels_column) if need_labels else None
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise DataFileError(path, reader.line_num, f"malformed line: {len(row)} fields, the header has "
                                                           f"{len(header)}")
            cell = row[labels_at].strip() if need_labels else ""
            labels = [label.strip() for label in cell.split(separator)] if cell else []
            if any(not label for label in labels):
                raise DataFileError(path, reader.line_num, f"empty label in {cell!r} (separator {separator!r})")
            yield _Record(reader.line_num, row[text_at], labels)
    except csv.Error as error:
        raise DataFileError(path, reader.line_num, f"malformed line: {error}") from None


def _goemotions_records(path, f):
    for number, line in enumerate(f, start=1):
        line = line.rstrip("\r\n")
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not _GOEMOTIONS_IDS.match(fields[1]):
            raise DataFileError(path, number, "malformed line: expected 'text<TAB>comma-separated label ids"
                                              "[<TAB>id]' (GoEmotions format)")
        yield _Record(number, fields[0], [int(x) for x in fields[1].split(",")])


def _looks_like_goemotions(path: str, text_column: str) -> bool:
    with _open_text(path) as f:
        first = f.readline().rstrip("\r\n").split("\t")
    return text_column not in first and len(first) >= 2 and bool(_GOEMOTIONS_IDS.match(first[1]))


def _parse(path, f, fmt, text_column, labels_column, separator, need_labels) -> list[_Record]:
    """Records of an open file in a resolved format, with the texts checked."""
    if fmt == "jsonl":
        records = list(_json_records(path, f, text_column, labels_column, need_labels))
    elif fmt == "goemotions":
        records = list(_goemotions_records(path, f))
    else:
        delimiter = "," if fmt == "csv" else "\t"
        records = list(_table_records(path, f, delimiter, text_column, labels_column, separator, need_labels))
    for record in records:
        if not isinstance(record.text, str):
            raise DataFileError(path, record.line, f"the text must be a string, got {record.text!r}")
        if not record.text.strip():
            raise DataFileError(path, record.line, "empty text")
    if not records:
        raise DataFileError(path, None, "the file holds no examples")
    return records


def _records(path, fmt, text_column, labels_column, separator, need_labels=True) -> list[_Record]:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "auto":
        fmt = _format_from_name(path)
        if fmt is None:
            raise DataFileError(path, None, "cannot tell the format from the file name: use .jsonl, .csv or .tsv "
                                            "(optionally .gz), or name the format")
        if fmt == "tsv" and _looks_like_goemotions(path, text_column):
            fmt = "goemotions"
    with _open_text(path) as f:
        return _parse(path, f, fmt, text_column, labels_column, separator, need_labels)


# ----------------------------------------------------------------------------------------------- labels
def _is_id(label) -> bool:
    return isinstance(label, int) or (isinstance(label, str) and label.isdigit())


def _label_set_from(records: list[_Record], path: str) -> list[str]:
    """Names in sorted order when the data names its labels; LABEL_0..LABEL_max when it gives only ids."""
    labels = [(record.line, label) for record in records for label in record.labels]
    if not labels:
        raise DataFileError(path, None, "no example has a label, so there is no label set; give --labels FILE")
    named = [(line, label) for line, label in labels if not _is_id(label)]
    if named and len(named) < len(labels):
        line = next(line for line, label in labels if _is_id(label))
        raise DataFileError(path, line, "labels mix names and ids; without a label file (--labels) use one or the other")
    if named:
        return sorted({label for _, label in named})
    return [f"LABEL_{i}" for i in range(max(int(label) for _, label in labels) + 1)]


def _resolve(record: _Record, path: str, name_to_id: dict[str, int], label_names: list[str]) -> list[int]:
    ids = []
    for label in record.labels:
        if isinstance(label, str) and label in name_to_id:
            index = name_to_id[label]
        elif _is_id(label):
            index = int(label)
            if not 0 <= index < len(label_names):
                raise DataFileError(path, record.line, f"label id {index} is out of range: the label set has "
                                                       f"{len(label_names)} labels (ids 0..{len(label_names) - 1})")
        else:
            known = ", ".join(label_names[:10]) + (", ..." if len(label_names) > 10 else "")
            raise DataFileError(path, record.line, f"unknown label {label!r} (the label set: {known})")
        if index not in ids:
            ids.append(index)
    return ids


def read_labeled(path: str, label_names: list[str] | None = None, problem_type: str = MULTI_LABEL,
                 fmt: str = "auto", text_column: str = "text", labels_column: str = "labels",
                 label_separator: str = ",") -> LabeledData:
    """Read a labelled file. Without `label_names` the label set is built from the file."""
    path = str(path)
    records = _records(path, fmt, text_column, labels_column, label_separator)
    names = list(label_names) if label_names is not None else _label_set_from(records, path)
    name_to_id = {name: i for i, name in enumerate(names)}
    labels = [_resolve(record, path, name_to_id, names) for record in records]
    if normalize_problem_type(problem_type) != MULTI_LABEL:
        for record, ids in zip(records, labels):
            if len(ids) != 1:
                raise DataFileError(path, record.line, f"single-label data needs exactly one label per example, "
                                                       f"got {len(ids)}")
    return LabeledData(path, [record.text for record in records], labels, names)


def read_texts(source: str, fmt: str = "auto", text_column: str = "text") -> list[str]:
    """Texts to classify from a file or `-` (standard input): plain lines (one text per line), JSONL with
    a text field, or CSV/TSV with a text column. `auto` goes by the file name (plain lines for other names
    and for standard input)."""
    if fmt not in TEXT_FORMATS:
        raise ValueError(f"input format must be one of {TEXT_FORMATS}, got {fmt!r}")
    name = "<stdin>" if source == "-" else str(source)
    if fmt == "auto":
        fmt = "lines" if source == "-" else (_format_from_name(name) or "lines")
    if source == "-":
        content = sys.stdin.read()
    else:
        with _open_text(name) as f:
            content = f.read()
    if fmt == "lines":
        texts = content.splitlines()
        for number, text in enumerate(texts, start=1):
            if not text.strip():
                raise DataFileError(name, number, "empty text (one text per line; remove blank lines)")
        if not texts:
            raise DataFileError(name, None, "no texts")
        return texts
    records = _parse(name, io.StringIO(content, newline=""), fmt, text_column, "", "", need_labels=False)
    return [record.text for record in records]
