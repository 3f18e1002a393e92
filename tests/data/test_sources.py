"""bitconv.data.sources and bitconv.data.tokens: text from files, folders, globs, tables and `datasets` (offline,
through local files and save_to_disk), tokenized once into the memory-mapped cache, mixed with weights."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from bitconv.data.sources import documents, joined_text, parse_count, parse_source
from bitconv.data.tokens import TokenCache, mix, token_stream
from bitconv.errors import BitconvError

DOCS = ["The first document talks about rivers.", "A second one, about mountains and snow.",
        "Third: the sea, salt and wind."]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from support.tiny_models import save_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    save_tokenizer(folder)
    return AutoTokenizer.from_pretrained(folder)


def _read(spec: str, column: str | None = None) -> list[str]:
    return list(documents(parse_source(spec), column).read())


def test_every_file_kind_yields_its_documents(tmp_path):
    (tmp_path / "a.txt").write_text("plain\r\ntext\n")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(DOCS)))
    (tmp_path / "c.csv").write_text("content,label\n" + "".join(f'"{d}",1\n' for d in DOCS))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": DOCS}), tmp_path / "d.parquet")
    assert _read(str(tmp_path / "a.txt")) == ["plain\ntext\n"]  # line ends made '\n' as training reads text
    assert _read(str(tmp_path / "b.jsonl")) == DOCS
    assert _read(str(tmp_path / "c.csv")) == DOCS  # 'content' found by name
    assert _read(f"{tmp_path / 'd.parquet'}?column=body") == DOCS
    assert _read(str(tmp_path / "*.jsonl")) == DOCS
    assert len(_read(f"{tmp_path}/[ab].*")) == 1 + len(DOCS)


def test_a_missing_text_column_or_an_empty_source_is_one_line(tmp_path, tokenizer):
    (tmp_path / "x.jsonl").write_text(json.dumps({"body": "text"}) + "\n")
    with pytest.raises(BitconvError, match=r"x\.jsonl \(line 1\): no text column \(looked for .*columns: body\); "
                                           r"pass \?column=NAME"):
        _read(str(tmp_path / "x.jsonl"))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": DOCS}), tmp_path / "y.parquet")
    with pytest.raises(BitconvError, match=r"y\.parquet: no text column 'text' \(columns: body\)"):
        _read(f"{tmp_path / 'y.parquet'}?column=text")
    (tmp_path / "blank.jsonl").write_text(json.dumps({"text": "  "}) + "\n")
    with pytest.raises(BitconvError, match=r"blank\.jsonl: empty source \(no text\)"):
        token_stream(documents(parse_source(str(tmp_path / "blank.jsonl"))), tokenizer, TokenCache(tmp_path / "c"))
    with pytest.raises(BitconvError, match=r"no such file, folder or glob"):
        parse_source(str(tmp_path / "nope" / "x.txt"))
    with pytest.raises(BitconvError, match=r"unknown option\(s\) colum"):
        parse_source(f"{tmp_path / 'x.jsonl'}?colum=body")


def test_datasets_through_load_dataset_and_save_to_disk_offline(tmp_path):
    import datasets

    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    assert _read(f"hf:json?data_files={tmp_path / 'd.jsonl'}") == DOCS  # the real load_dataset path, local files
    datasets.Dataset.from_dict({"sentence": DOCS}).save_to_disk(str(tmp_path / "saved"))
    spec = parse_source(str(tmp_path / "saved"))
    assert spec.kind == "disk" and list(documents(spec).read()) == DOCS
    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": DOCS[:1]})}).save_to_disk(str(tmp_path / "dd"))
    assert _read(f"{tmp_path / 'dd'}?split=test") == DOCS[:1]
    with pytest.raises(BitconvError, match=r"no split 'train' \(splits: test\)"):
        _read(str(tmp_path / "dd"))


def test_a_dataset_name_not_available_offline_says_how_to_pass_local_files(monkeypatch):
    import datasets

    def offline(*args, **kwargs):  # what load_dataset raises without the Hub (HF_HUB_OFFLINE=1 in the tests)
        raise ConnectionError("Couldn't reach 'someone/corpus' on the Hub (offline mode is enabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(BitconvError, match=r"dataset 'someone/corpus' is not available here \(Couldn't reach.*\); "
                                           r"without the Hub, pass local files") as err:
        _read("someone/corpus")
    assert "\n" not in str(err.value)


def test_tokenized_once_cached_and_invalidated_by_content(tmp_path, tokenizer):
    path = tmp_path / "t.txt"
    path.write_text("one two three four five six seven\n" * 30)
    cache = TokenCache(tmp_path / "cache")
    first = token_stream(documents(parse_source(str(path))), tokenizer, cache, progress=False)
    assert isinstance(first, np.memmap) and first[-1] == tokenizer.eos_token_id  # a separator closes the document
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    again = token_stream(documents(parse_source(str(path))), tokenizer, cache, progress=False)
    assert np.array_equal(first, again) and sorted(p.name for p in (tmp_path / "cache").iterdir()) == files
    path.write_text("other words now\n" * 30)
    changed = token_stream(documents(parse_source(str(path))), tokenizer, cache, progress=False)
    assert len(list((tmp_path / "cache").glob("*.u32"))) == 2 and not np.array_equal(first[:10], changed[:10])
    docs = [f"doc {i} " + "word " * (i + 3) for i in range(5)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    stream = token_stream(documents(parse_source(str(tmp_path / "d.jsonl"))), tokenizer, cache, progress=False)
    assert int((np.asarray(stream) == tokenizer.eos_token_id).sum()) == len(docs)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_folder_is_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(BitconvError, match=r"cache folder .*ro is not writable .*; pass --cache-dir"):
        TokenCache(ro)


def test_a_cache_folder_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(BitconvError, match=r"cache folder .*file/tokens is not writable .*; pass --cache-dir"):
        TokenCache(blocker / "tokens")


def test_mixing_follows_the_weights_and_refuses_bad_ones():
    a, b = np.arange(40, dtype=np.uint32), np.arange(100, 120, dtype=np.uint32)
    natural = mix([a, b], ["a", "b"], [None, None], 4, seed=0)
    assert len(natural) == 15 and natural.get([10])[0].tolist() == [100, 101, 102, 103]
    weighted = mix([a, b], ["a", "b"], [1.0, 2.0], 4, seed=0)
    sources = weighted.index[:, 0]
    assert len(weighted) == 15 and (sources == 1).sum() == 10 and (sources == 0).sum() == 5
    assert len(set(weighted.index[sources == 1, 1].tolist())) == 5  # b's 5 blocks, each repeated twice
    with pytest.raises(BitconvError, match="mixing weights must be >= 0"):
        mix([a, b], ["a", "b"], [1.0, -1.0], 4, seed=0)
    with pytest.raises(BitconvError, match="give \\?weight= to every --train source or to none"):
        mix([a, b], ["a", "b"], [1.0, None], 4, seed=0)
    with pytest.raises(BitconvError, match="weight '-2' must be a number >= 0"):
        parse_source("teacher:1M?weight=-2").weight
    with pytest.raises(BitconvError, match="b: 3 tokens, fewer than one block"):
        mix([a, np.arange(3, dtype=np.uint32)], ["a", "b"], [None, None], 4, seed=0)


def test_counts_and_joined_text(tmp_path):
    assert parse_count("20M", "x") == 20_000_000 and parse_count("1.5k", "x") == 1500 and parse_count("2e3", "x") == 2000
    with pytest.raises(BitconvError, match="write a count such as 20M"):
        parse_count("lots", "teacher:lots")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    assert joined_text(documents(parse_source(str(tmp_path / "d.jsonl")))) == "\n\n".join(DOCS)
