import pytest
import torch

from bitconv.errors import BitconvError
from bitconv.train.data import (
    class_ids,
    label_names,
    read_labelled,
    read_training_text,
    split_labelled_tsv,
    token_blocks,
)


def test_labelled_examples_are_stripped_and_labels_numbered_by_the_training_file(tmp_path):
    path = tmp_path / "sst.tsv"
    path.write_text("label\tsentence\n1\t a fine film \n0\ta dull one\n")
    data = read_labelled(path)
    assert data.texts == ["a fine film", "a dull one"] and data.labels == ["1", "0"]
    assert label_names(data) == ["0", "1"] and class_ids(data, ["0", "1"]) == [1, 0]
    other = tmp_path / "other.tsv"
    other.write_text("sentence\tlabel\nthe movie was good\tpositive\n")
    with pytest.raises(BitconvError, match=r"other\.tsv: label 'positive' \(example 1\) is not in the training "
                                           r"file's labels \(0, 1\)"):
        class_ids(read_labelled(other), ["0", "1"])


def test_label_set_checks(tmp_path):
    one = tmp_path / "one.tsv"
    one.write_text("sentence\tlabel\na\t1\nb\t1\n")
    with pytest.raises(BitconvError, match="only one label"):
        label_names(read_labelled(one))
    swapped = tmp_path / "swapped.tsv"
    swapped.write_text("".join(f"{i % 2}\tmessage {i}\n" for i in range(70)))
    with pytest.raises(BitconvError, match="70 distinct labels in the label column; is it the text column?"):
        read_labelled(swapped, text_column="0", label_column="1")


def test_training_text_has_unix_line_ends(tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"one\r\ntwo\rthree\n")
    text, sha = read_training_text(path)
    assert text == "one\ntwo\nthree\n" and len(sha) == 64
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(BitconvError, match="empty"):
        read_training_text(empty)


def test_split_is_stratified_and_fixed_by_the_seed(tmp_path):
    src = tmp_path / "all.tsv"
    src.write_text("".join(f"{'spam' if i % 5 == 0 else 'ham'}\tmessage {i}\n" for i in range(100)))
    train, val = split_labelled_tsv(src, tmp_path / "a", 0.2, seed=0)
    again = split_labelled_tsv(src, tmp_path / "b", 0.2, seed=0)
    assert train.read_bytes() == again[0].read_bytes() and val.read_bytes() == again[1].read_bytes()
    v = read_labelled(val)
    t = read_labelled(train)
    assert len(v.texts) == 20 and v.labels.count("spam") == 4 and len(t.texts) == 80
    assert not set(v.texts) & set(t.texts)


def test_token_blocks_drop_the_ragged_tail(tmp_path):
    blocks = token_blocks(list(range(10)), 4, tmp_path / "x")
    assert blocks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(BitconvError, match="fewer than one block"):
        token_blocks([1, 2], 4, tmp_path / "x")
    assert token_blocks(torch.arange(8), 8, tmp_path / "x").shape == (1, 8)
