"""Careless outputs (issue 12): bitconv never writes over, into or through its input, --force replaces only what
bitconv wrote, and a read-only, full or file-blocked output is one line and exit code 1, leaving nothing behind.
Every test checks that nothing outside the output changed."""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest

from bitconv.format.atomic import remove_stale, scratch_folder, staged_file, staged_folder
from support.isolation import bitconv_process, dead_pid, one_line_error, snapshot
from support.packed_files import write_bitconv_folder
from support.paths import FIXTURE_TEXT


@pytest.fixture
def work(tmp_path, tiny_llama):
    """tmp/work/models/llama: a source checkpoint inside a folder a careless --out might name."""
    shutil.copytree(tiny_llama, tmp_path / "work" / "models" / "llama")
    return tmp_path / "work"


@pytest.fixture
def packed(tmp_path):
    return write_bitconv_folder(tmp_path / "packed")


def refused(run_cli, *args) -> str:
    code, out, err = run_cli(*map(str, args))
    assert code == 1, (out, err)
    return one_line_error(err)


@pytest.mark.parametrize("out", [".", "models", "models/llama", "models/llama/inside"])
def test_convert_never_writes_over_into_or_around_its_source(run_cli, work, out):
    """`--out DIR --force` with DIR an ancestor of the source used to delete the source (exit 0)."""
    before = snapshot(work)
    message = refused(run_cli, "convert", work / "models" / "llama", "--out", work / out, "--force")
    assert "is, holds or sits inside the input" in message
    assert snapshot(work) == before


def test_a_link_cannot_smuggle_the_source_in(run_cli, work, tmp_path):
    (tmp_path / "link").symlink_to(work / "models")
    before = snapshot(work)
    assert "sits inside the input" in refused(run_cli, "convert", work / "models" / "llama", "--out",
                                              tmp_path / "link" / "llama" / "out", "--force")
    (tmp_path / "out-link").symlink_to(tmp_path / "elsewhere")
    assert "is a symbolic link" in refused(run_cli, "convert", work / "models" / "llama", "--out",
                                           tmp_path / "out-link", "--force")
    assert snapshot(work) == before and not (tmp_path / "elsewhere").exists()


def test_exports_never_replace_their_input_or_an_existing_file_without_force(run_cli, packed, tmp_path):
    before = snapshot(packed)
    # --gguf --force onto the input's own weights used to destroy them
    assert "sits inside the input" in refused(run_cli, "export", packed, "--gguf", packed / "model.safetensors",
                                              "--force")
    (tmp_path / "old.onnx").write_bytes(b"an older export")
    assert "already exists" in refused(run_cli, "export", packed, "--onnx", tmp_path / "old.onnx")
    assert "already exists" in refused(run_cli, "export", packed, "--gguf", tmp_path / "old.onnx")
    assert "sits inside the input" in refused(run_cli, "export", packed, "--hf-bitnet", packed / "hf", "--force")
    assert "sits inside the input" in refused(run_cli, "inspect", packed, "--json", packed / "config.json")
    assert snapshot(packed) == before and (tmp_path / "old.onnx").read_bytes() == b"an older export"


def test_reports_never_replace_what_they_read(run_cli, packed, tmp_path):
    results = tmp_path / "runs"
    results.mkdir()
    (results / "a.json").write_text("{}")
    before = snapshot(tmp_path)
    assert "sits inside the input" in refused(run_cli, "report", results, "--html", results / "a.json")
    assert "sits inside the input" in refused(run_cli, "eval", packed, "--data", FIXTURE_TEXT, "--json", FIXTURE_TEXT)
    assert "is, holds or sits inside the input" in refused(run_cli, "compare", packed, "--out", packed / "runs",
                                                           "--data", FIXTURE_TEXT)
    assert snapshot(tmp_path) == before


def test_force_replaces_only_what_bitconv_wrote(run_cli, work, tmp_path):
    source = work / "models" / "llama"
    user_model = tmp_path / "user-model"
    shutil.copytree(source, user_model)  # a flat folder with a config.json, not written by bitconv
    nested = tmp_path / "nested"
    (nested / "sub").mkdir(parents=True)
    (nested / "config.json").write_text("{}")
    before = snapshot(tmp_path)
    for out in (user_model, nested, FIXTURE_TEXT):
        message = refused(run_cli, "convert", source, "--out", out, "--force")
        assert "not a folder bitconv wrote" in message or "is not a folder" in message
    assert snapshot(tmp_path) == before

    ours = tmp_path / "ours"
    code, _, err = run_cli("convert", source, "--out", ours)
    assert code == 0, err
    (tmp_path / "empty").mkdir()
    for out in (ours, tmp_path / "empty"):  # a bitconv output and an empty folder are replaced
        code, _, err = run_cli("convert", source, "--out", out, "--force", "--bits", "8")
        assert code == 0, err
        assert json.loads((out / "config.json").read_text())["quantization_config"]["bits"] == 8


def test_output_folders_get_the_umask_permissions(run_cli, work, tmp_path):
    old = os.umask(0o022)
    try:
        code, _, err = run_cli("convert", work / "models" / "llama", "--out", tmp_path / "q")
    finally:
        os.umask(old)
    assert code == 0, err
    assert (tmp_path / "q").stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "q").iterdir()} == {0o644}


@pytest.mark.parametrize("args", [
    ("convert", "{source}", "--out", "{blocker}/out"),
    ("export", "{packed}", "--gguf", "{blocker}/x.gguf"),
    ("export", "{packed}", "--onnx", "{blocker}/sub/x.onnx"),
    ("eval", "{packed}", "--data", str(FIXTURE_TEXT), "--json", "{blocker}/r.json"),
    ("report", "{packed}", "--html", "{blocker}/r.html"),
])
def test_an_output_under_a_file_is_one_line(run_cli, work, packed, tmp_path, args):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    before = snapshot(tmp_path)
    names = {"source": work / "models" / "llama", "packed": packed, "blocker": blocker}
    assert "is not a folder" in refused(run_cli, *(a.format(**names) for a in args))
    assert snapshot(tmp_path) == before


def _without_root_privileges() -> tuple[str, ...]:
    """A prefix that makes a read-only folder read-only for the child even when the tests run as root."""
    if os.geteuid() != 0:
        return ()
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: a read-only folder cannot be made read-only for the child")
    caps = "-dac_override,-dac_read_search"
    return ("setpriv", "--bounding-set", caps, "--inh-caps", caps)


def test_a_read_only_output_folder_is_one_line(packed, tmp_path):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    before = snapshot(tmp_path)
    try:
        code, _, err = bitconv_process("export", packed, "--gguf", read_only / "x.gguf", prefix=_without_root_privileges())
    finally:
        read_only.chmod(0o755)
    assert code == 1 and "is not writable" in one_line_error(err), err
    read_only.chmod(0o555)
    assert snapshot(tmp_path) == before


def test_a_full_disk_is_one_line_and_leaves_nothing(work, tmp_path):
    """RLIMIT_FSIZE makes every write past 16 KiB fail (EFBIG), as a full disk fails them (ENOSPC); the converted
    weights are larger."""
    if not shutil.which("prlimit"):
        pytest.skip("prlimit is needed to limit the child's file size")
    before = snapshot(work)
    code, _, err = bitconv_process("convert", work / "models" / "llama", "--out", tmp_path / "out",
                                   prefix=("prlimit", "--fsize=16384"), env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert code == 1 and "cannot write" in one_line_error(err) and "File too large" in err, err
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert snapshot(work) == before


def test_stale_temporaries_of_killed_runs_are_removed_by_the_next_run(run_cli, work, tmp_path):
    host, gone = socket.gethostname(), dead_pid()
    stale = tmp_path / f".q.partial-{host}-{gone}-abc123"  # a SIGKILLed convert's half-written folder
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    replaced = tmp_path / f".q.replaced-{host}-{gone}-zz9"
    replaced.mkdir()
    kept = [tmp_path / f".q.partial-{host}-{os.getpid()}-live00",  # a run still going
            tmp_path / f".q.partial-other-host-{gone}-abc123",  # another machine's, on a shared disk
            tmp_path / ".q.partial-abc123",  # not our naming
            tmp_path / f".other.partial-{host}-{gone}-abc123"]  # another output's
    for path in kept:
        path.mkdir()
    code, _, err = run_cli("convert", work / "models" / "llama", "--out", tmp_path / "q")
    assert code == 0, err
    assert not stale.exists() and not replaced.exists() and all(p.exists() for p in kept)


def test_an_output_a_killed_run_had_moved_aside_is_put_back(run_cli, work, tmp_path):
    """Killed between moving the old output aside and renaming the new one in: the next run finds the old output
    back in place (so without --force it is not replaced)."""
    aside = tmp_path / f".q.replaced-{socket.gethostname()}-{dead_pid()}-ab12"
    (aside / "q").mkdir(parents=True)
    (aside / "q" / "config.json").write_text('{"previous": true}')
    message = refused(run_cli, "convert", work / "models" / "llama", "--out", tmp_path / "q")
    assert "already exists" in message
    assert json.loads((tmp_path / "q" / "config.json").read_text()) == {"previous": True}


def test_stale_scratch_folders_in_the_temporary_folder_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    host, gone = socket.gethostname(), dead_pid()
    (tmp_path / f"bitconv-onnx-{host}-{gone}-x1y2").mkdir()
    (tmp_path / f"bitconv-onnx-{host}-{os.getpid()}-live").mkdir()
    with scratch_folder("bitconv-onnx-") as scratch:
        assert scratch.parent == tmp_path and scratch.stat().st_mode & 0o777 == 0o777 & ~_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"bitconv-onnx-{host}-{os.getpid()}-live"]
    assert remove_stale(tmp_path, "bitconv-onnx-") == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_cleanup_error_never_hides_the_first_error(tmp_path, monkeypatch):
    def failing_unlink(self, missing_ok=False):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr("pathlib.Path.unlink", failing_unlink)
    with pytest.raises(ValueError, match="the first error"):
        with staged_file(tmp_path / "x.gguf") as tmp:
            tmp.write_bytes(b"half")
            raise ValueError("the first error")
    monkeypatch.setattr("shutil.rmtree", lambda *a, **k: (_ for _ in ()).throw(OSError("cleanup failed")))
    with pytest.raises(KeyError, match="first"):
        with staged_folder(tmp_path / "out"):
            raise KeyError("first")
