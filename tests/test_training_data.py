import pytest
import torch

from bitconv.errors import BitconvError
from bitconv.training_data import (
    label_ids, label_names, read_labelled_tsv, read_text, split_labelled_tsv, token_blocks,
)


def test_header_file_found_by_column_names(tmp_path):
    path = tmp_path / "sst.tsv"
    path.write_text("label\tsentence\n1\ta fine film \n0\ta dull one\n")
    data = read_labelled_tsv(path)
    assert data.texts == ["a fine film", "a dull one"] and data.labels == ["1", "0"]
    assert label_names(data) == ["0", "1"] and label_ids(data, ["0", "1"]) == [1, 0]


def test_headerless_file_takes_the_few_valued_column_as_labels(tmp_path):
    path = tmp_path / "sms.tsv"
    path.write_text("ham\tsee you at 5\nspam\tWIN a prize now\nham\tok\n")
    data = read_labelled_tsv(path)
    assert data.labels == ["ham", "spam", "ham"] and data.texts[1] == "WIN a prize now"


def test_named_columns_and_missing_ones(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("id\treview\tstars\n1\tgreat\t5\n2\tbad\t1\n")
    data = read_labelled_tsv(path, text_column="review", label_column="stars")
    assert data.texts == ["great", "bad"] and data.labels == ["5", "1"]
    with pytest.raises(BitconvError, match=r"t.tsv: no label column 'score' \(columns: id, review, stars\)"):
        read_labelled_tsv(path, text_column="review", label_column="score")
    with pytest.raises(BitconvError, match="3 columns and no header"):
        read_labelled_tsv(path)


def test_label_set_checks(tmp_path):
    one = tmp_path / "one.tsv"
    one.write_text("sentence\tlabel\na\t1\nb\t1\n")
    with pytest.raises(BitconvError, match="only one label"):
        label_names(read_labelled_tsv(one))
    with pytest.raises(BitconvError, match="no such file"):
        read_labelled_tsv(tmp_path / "missing.tsv")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(BitconvError, match="empty"):
        read_text(empty)


def test_split_is_stratified_and_fixed_by_the_seed(tmp_path):
    src = tmp_path / "all.tsv"
    src.write_text("".join(f"{'spam' if i % 5 == 0 else 'ham'}\tmessage {i}\n" for i in range(100)))
    train, val = split_labelled_tsv(src, tmp_path / "a", 0.2, seed=0)
    again = split_labelled_tsv(src, tmp_path / "b", 0.2, seed=0)
    assert train.read_bytes() == again[0].read_bytes() and val.read_bytes() == again[1].read_bytes()
    v = read_labelled_tsv(val)
    t = read_labelled_tsv(train)
    assert len(v.texts) == 20 and v.labels.count("spam") == 4 and len(t.texts) == 80
    assert not set(v.texts) & set(t.texts)


def test_token_blocks_drop_the_ragged_tail(tmp_path):
    blocks = token_blocks(list(range(10)), 4, tmp_path / "x")
    assert blocks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(BitconvError, match="fewer than one block"):
        token_blocks([1, 2], 4, tmp_path / "x")
    assert token_blocks(torch.arange(8), 8, tmp_path / "x").shape == (1, 8)
