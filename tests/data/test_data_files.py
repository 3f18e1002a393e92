import hashlib

import pytest

from bitconv.data.files import label_ids, parse_label_map, read_examples, read_text, text_slice
from bitconv.errors import BitconvError

TEXT = "".join(f"Line {i}: to be, or not to be, that is the question {i * 7 % 13}.\n" for i in range(120))


# ---------------------------------------------------------------------------------------------------------
# plain text


def test_text_is_read_as_written_with_the_sha256_of_its_bytes(tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes("naïve\r\ncafé\n".encode("utf-8"))
    text, sha = read_text(path)
    assert text == "naïve\r\ncafé\n" and sha == hashlib.sha256(path.read_bytes()).hexdigest()


def test_unreadable_text_is_one_error_naming_the_file_and_the_fix(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"fine\n\xff")
    (tmp_path / "empty.txt").write_text("  \n")
    for name, pattern in [("missing.txt", r"missing\.txt: data file not found; check the path"),
                          (".", r": is not a file; pass the data file itself"),
                          ("bad.txt", r"bad\.txt: not UTF-8 text \(byte 5\); convert it to UTF-8"),
                          ("empty.txt", r"empty\.txt: the data file is empty")]:
        with pytest.raises(BitconvError, match=pattern):
            read_text(tmp_path / name)


def test_held_out_slice_starts_on_a_line_and_is_the_tail(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    s = text_slice(path, start_fraction=0.9)
    assert TEXT[s.start_char - 1] == "\n" and s.start_char >= int(0.9 * len(TEXT))
    assert s.text == TEXT[s.start_char:] and s.end_char == len(TEXT)
    assert s.file_sha256 == hashlib.sha256(TEXT.encode()).hexdigest()
    with pytest.raises(BitconvError, match="start < end"):
        text_slice(path, start_fraction=0.5, end_fraction=0.5)


# ---------------------------------------------------------------------------------------------------------
# labelled tables


def test_tables_with_named_or_numbered_columns(tmp_path):
    sst = tmp_path / "sst.tsv"
    sst.write_text('sentence\tlabel\na "quoted" film \t1\ndull\t0\n')
    ex = read_examples(sst, "sentence", "label")
    assert ex.texts == ['a "quoted" film ', "dull"] and ex.labels == ["1", "0"] and ex.header
    sms = tmp_path / "sms.tsv"
    sms.write_text("ham\thello there\nspam\tWIN NOW\n")
    ex = read_examples(sms, text_column="1", label_column="0")
    assert ex.texts == ["hello there", "WIN NOW"] and ex.labels == ["ham", "spam"] and not ex.header
    csv_file = tmp_path / "d.csv"
    csv_file.write_text('text,label\n"hello, world",pos\nbye,neg\n')
    assert read_examples(csv_file, text_column="text", label_column="label").texts == ["hello, world", "bye"]
    semi = tmp_path / "d.txt"
    semi.write_text("x;y;label\n\n  \nsome text;-;pos\nmore;-; neg \n")
    ex = read_examples(semi, "0", "label", delimiter=";", max_examples=1)
    assert ex.texts == ["some text"] and ex.labels == ["pos"] and ex.text_column == "0"


def test_names_match_exactly_first_then_without_case(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("Label\tlabel\t Text \nA\ta\tone\n")
    assert read_examples(path, "text", "label").labels == ["a"]
    assert read_examples(path, "text", "LABEL").labels == ["A"]


def test_columns_not_given_are_found_in_the_header_by_their_usual_names(tmp_path):
    path = tmp_path / "sst.tsv"
    path.write_text("label\tsentence\n1\ta fine film \n0\ta dull one\n")
    ex = read_examples(path)
    assert ex.texts == ["a fine film ", "a dull one"] and ex.labels == ["1", "0"]
    assert (ex.text_column, ex.label_column, ex.header) == ("sentence", "label", True)
    reviews = tmp_path / "r.tsv"
    reviews.write_text("id\tReview\tstars\n1\tgreat\t5\n")
    assert read_examples(reviews, label_column="stars").texts == ["great"]


def test_a_headerless_two_column_file_takes_the_few_valued_column_as_labels(tmp_path):
    path = tmp_path / "sms.tsv"
    path.write_text("ham\tsee you at 5\nspam\tWIN a prize now\nham\tok\n")
    ex = read_examples(path)
    assert ex.labels == ["ham", "spam", "ham"] and ex.texts[1] == "WIN a prize now"
    assert (ex.text_column, ex.label_column, ex.header) == ("1", "0", False)
    assert read_examples(path, label_column="0").texts == ex.texts
    assert read_examples(path, text_column="0").labels == ["see you at 5", "WIN a prize now", "ok"]
    with pytest.raises(BitconvError, match=r"--label-column 2, but the file has two columns \(0 and 1\)"):
        read_examples(path, label_column="2")


@pytest.mark.parametrize("content,kwargs,pattern", [
    ("id\treview\tstars\n1\tgreat\t5\n", dict(text_column="review", label_column="score"),
     r"t\.tsv: no column named 'score' \(the header has 'id', 'review', 'stars'\); pass --label-column"),
    ("id\treview\tstars\n1\tgreat\t5\n", dict(), r"t\.tsv: line 1 has 3 column\(s\) and no header naming them"),
    ("id\tbody\tstars\n1\tgreat\t5\n", dict(label_column="stars"),
     r"the header \('id', 'body', 'stars'\) names no text column; pass --text-column"),
    ("a\t1\n", dict(text_column="sentence", label_column="label", header=False),
     r"--text-column 'sentence' is a column name, but the file is read without a header"),
    ("sentence\tlabel\n\nfine\t1\nshort\n", dict(), r"t\.tsv: line 4 has 1 column\(s\), column 1 is needed"),
    ("sentence\tlabel\n\n", dict(), r"t\.tsv: no examples, only a header"),
    ("a\t1\n", dict(delimiter="||"), r"--delimiter '\|\|': pass one character"),
])
def test_bad_tables_are_one_error_naming_the_file_and_the_fix(tmp_path, content, kwargs, pattern):
    path = tmp_path / "t.tsv"
    path.write_text(content)
    with pytest.raises(BitconvError, match=pattern) as info:
        read_examples(path, **kwargs)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# labels


def test_label_mapping_by_name_number_and_explicit_map():
    id2label = {0: "ham", 1: "spam"}
    assert label_ids(["spam", "HAM", "1", "0"], id2label, None, "f") == [1, 0, 1, 0]
    assert label_ids(["yes", "no"], id2label, {"yes": 1, "no": 0}, "f") == [1, 0]
    with pytest.raises(BitconvError, match="label 'maybe' \\(example 2\\) is not in the model's label map"):
        label_ids(["spam", "maybe"], id2label, None, "f")
    with pytest.raises(BitconvError, match=r"f: label 'Yes' \(example 1\) is not in --label-map \(yes, no\)"):
        label_ids(["Yes"], id2label, {"yes": 1, "no": 0}, "f")
    with pytest.raises(BitconvError, match=r"label 'yes' maps to class 2, which the model does not have"):
        label_ids(["yes"], id2label, {"yes": 2}, "f")


def test_label_map_option_is_parsed_or_refused():
    assert parse_label_map("ham=0, spam = 1") == {"ham": 0, "spam": 1}
    assert parse_label_map(None) is None
    with pytest.raises(BitconvError, match="write NAME=ID pairs"):
        parse_label_map("ham:0")
