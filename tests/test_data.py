import json

import numpy as np
import pytest

from common.data import encode_labels, label_set_of, partition, read_records, split_train_eval
from common.errors import FedSiloError


def write(tmp_path, name, content, mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_reads_csv_with_quoting(tmp_path):
    path = write(tmp_path, "d.csv", 'text,label\n"Hello, world",pos\nplain,neg\n')
    rec = read_records(path)
    assert rec.texts == ["Hello, world", "plain"] and rec.labels == ["pos", "neg"]


def test_reads_tsv_without_quoting_like_shared_data(tmp_path):
    path = write(tmp_path, "d.tsv", 'text\tlabel\n"quoted start\tpos\nb\tneg\n')
    assert read_records(path).texts == ['"quoted start', "b"]


def test_reads_jsonl_and_custom_columns(tmp_path):
    rows = [{"body": "x y", "y": "a"}, {"body": "z", "y": 3}]
    path = write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    rec = read_records(path, "body", "y")
    assert rec.texts == ["x y", "z"] and rec.labels == ["a", "3"]


def test_utf8_bom_is_accepted(tmp_path):
    path = write(tmp_path, "d.csv", "\ufefftext,label\nä,b\n")
    assert read_records(path).texts == ["ä"]


@pytest.mark.parametrize("name, content, fragment", [
    ("d.csv", "", "empty"),
    ("d.csv", "text,label\n", "no records"),
    ("d.csv", "text,category\na,b\n", "missing column 'label'"),
    ("d.csv", "text,label\na,b,c\n", ":2: expected 2 fields"),
    ("d.csv", "text,text\na,b\n", "duplicated column"),
    ("d.csv", "text,label\n,b\n", "empty or non-text"),
    ("d.csv", "text,label\na,\n", "empty or invalid label"),
    ("d.jsonl", '{"text": "a", "label": "b"}\n{oops\n', ":2: invalid JSON"),
    ("d.jsonl", '["a", "b"]\n', "JSON object"),
    ("d.xlsx", "x", "unsupported data format"),
])
def test_bad_files_raise_one_clear_error(tmp_path, name, content, fragment):
    with pytest.raises(FedSiloError) as err:
        read_records(write(tmp_path, name, content))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_non_utf8_names_the_line(tmp_path):
    path = write(tmp_path, "d.csv", b"text,label\nok,a\ncaf\xe9,b\n", mode="wb")
    with pytest.raises(FedSiloError, match=r"d.csv:3: not valid UTF-8"):
        read_records(path)


def test_missing_file(tmp_path):
    with pytest.raises(FedSiloError, match="not found"):
        read_records(tmp_path / "nope.csv")


def test_label_mapping_follows_the_run_label_set(tmp_path):
    rec = read_records(write(tmp_path, "d.csv", "text,label\na,pos\nb,neg\nc,pos\n"))
    assert encode_labels(rec, ("neg", "pos")).tolist() == [1, 0, 1]
    assert encode_labels(rec, ("pos", "neg")).tolist() == [0, 1, 0]
    assert label_set_of(rec) == ("neg", "pos")
    with pytest.raises(FedSiloError, match="'pos' not in the run's label set"):
        encode_labels(rec, ("neg", "neutral"))


def test_split_is_seeded_disjoint_and_complete():
    train, ev = split_train_eval(100, 0.2, seed=3)
    assert len(ev) == 20 and len(train) == 80
    assert sorted(np.concatenate([train, ev]).tolist()) == list(range(100))
    again = split_train_eval(100, 0.2, seed=3)
    assert all((a == b).all() for a, b in zip((train, ev), again))
    assert not (split_train_eval(100, 0.2, seed=4)[1] == ev).all()
    assert len(split_train_eval(3, 0.01, seed=0)[1]) == 1  # at least one eval record


def test_iid_partition_covers_every_record_once():
    labels = np.arange(103) % 4
    parts = partition(labels, 5, "iid", 0.5, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_dirichlet_partition_skews_labels():
    labels = np.repeat(np.arange(4), 250)
    skewed = partition(labels, 4, "dirichlet", 0.1, seed=0)
    even = partition(labels, 4, "dirichlet", 1000.0, seed=0)
    assert sorted(np.concatenate(skewed).tolist()) == list(range(1000))

    def mean_top_share(parts):
        return np.mean([np.bincount(labels[p], minlength=4).max() / len(p) for p in parts])

    assert mean_top_share(skewed) > 0.6 > mean_top_share(even)
    assert min(map(len, skewed)) >= 2


def test_contiguous_partition_keeps_file_order_blocks_whatever_the_seed():
    labels = np.arange(10) % 2
    parts = partition(labels, 3, "contiguous", 0.5, seed=1)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [p.tolist() for p in partition(labels, 3, "contiguous", 0.5, seed=7)] == [p.tolist() for p in parts]


def test_partition_rejects_more_sites_than_records():
    with pytest.raises(FedSiloError, match="cannot split 3 records over 5 sites"):
        partition(np.zeros(3, dtype=int), 5, "iid", 0.5, 0)


def test_line_limit_boundary_and_unicode_line_separators(tmp_path):
    from common.data import MAX_LINE_BYTES

    text = "x" * (MAX_LINE_BYTES - len("\tpos"))  # the longest line allowed (its line break not counted)
    path = write(tmp_path, "d.tsv", f"text\tlabel\n{text}\tpos\nsplit\u2028not\tneg\n")
    rec = read_records(path)
    assert rec.texts == [text, "split\u2028not"] and rec.labels == ["pos", "neg"]
    write(tmp_path, "d.tsv", f"text\tlabel\n{text}y\tpos\n")
    with pytest.raises(FedSiloError, match=r"d.tsv:2: line longer than 1 MiB"):
        read_records(path)
