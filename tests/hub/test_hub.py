"""`bitconv push` against the loopback Hub of tests/hub_server.py, through huggingface_hub's real client code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from bitconv.errors import BitconvError
from bitconv.evaluate.run import EvalConfig
from bitconv.format.summary import summarize
from bitconv.hub.push import plan_push, push
from bitconv.report.model_card import front_matter
from support.hub_server import TEST_TOKEN as TOKEN
from support.hub_server import HubServer


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_uploads_every_file_byte_for_byte_in_one_commit(hub, folder):
    before = folder_digest(folder)
    result = push(folder, "test-user/smol-1.58")
    state = hub.state
    assert result.pushed and result.commit_oid == state.repos["test-user/smol-1.58"].branches["main"]
    files = state.head_files("test-user/smol-1.58")
    for rel in ("config.json", "model.safetensors", "tokenizer.json"):
        assert files[rel] == (folder / rel).read_bytes(), rel
    assert set(files) == {".gitattributes", "config.json", "model.safetensors", "tokenizer.json", "README.md"}
    # the weights went through the LFS batch API + a PUT, the small JSON files inline in the commit
    weights = (folder / "model.safetensors").read_bytes()
    assert state.blobs[hashlib.sha256(weights).hexdigest()] == weights
    assert ("PUT", f"/lfs/upload/{hashlib.sha256(weights).hexdigest()}") in state.requests
    head = state.repos["test-user/smol-1.58"].commits[result.commit_oid]
    assert head.lfs_paths == {"model.safetensors"}
    commits = state.commits_on("test-user/smol-1.58")
    assert len(commits) == 2 and commits[0].summary.startswith("Upload smol-1.58 (1.58-bit tensor 2bit)")
    # the card is the generated one, the user's folder is untouched
    assert files["README.md"].decode() == result.plan.card
    assert folder_digest(folder) == before
    assert not state.repos["test-user/smol-1.58"].private


def test_model_card_content(hub, folder):
    card = plan_push(folder, "test-user/smol-1.58").card
    meta = front_matter(card)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["base_model_relation"] == "quantized"
    assert meta["license"] == "apache-2.0"  # carried from the source README in the folder
    assert meta["library_name"] == "bitconv"
    assert {"ternary", "1.58-bit", "bitnet", "llama"} <= set(meta["tags"])
    assert meta["pipeline_tag"] == "text-generation"
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    for key in qc:
        assert f"| {key} |" in card, key
    summary = summarize(folder)
    totals = summary.totals()
    # 2 layers x 7 ternary projections: 64x64 (x4), 128x64 (x2), 64x128 -> [out, ceil(in/4)] bytes + a 4-byte scale
    expected_linear = 2 * (4 * (64 * 16 + 4) + 2 * (128 * 16 + 4) + (64 * 32 + 4))
    assert totals["linear"]["n_bytes"] == expected_linear and summary.n_quantized == 14
    assert totals["embedding"]["n_bytes"] == 96 * 64 * 2
    assert totals["other"]["n_bytes"] == (2 * 2 + 1) * 64 * 2
    assert f"| {expected_linear} |" in card
    assert "No evaluation report was given" in card
    assert "bitconv.load(" in card and "onnxruntime" in card and "--gguf" in card and "--hf-bitnet" in card


def test_report_table_from_option_and_from_folder(hub, folder, tmp_path):
    report = tmp_path / "runs.json"
    report.write_text(json.dumps({"rows": [
        {"model": "fp16", "perplexity": 27.01, "size": {"n_bytes": 270000000}},
        {"model": "ternary", "perplexity": 31.5, "size": {"n_bytes": 60000000}},
    ]}))
    card = plan_push(folder, "test-user/smol-1.58", report=report).card
    assert "From the report `runs.json`" in card
    assert "| model | perplexity | size.n_bytes |" in card and "| ternary | 31.5 | 60000000 |" in card
    assert "No evaluation report" not in card
    # a report*.json inside the folder is found (and uploaded with it)
    (folder / "report.json").write_text(json.dumps([{"model": "ternary", "accuracy": 0.857}]))
    plan = plan_push(folder, "test-user/smol-1.58")
    assert "| ternary | 0.857 |" in plan.card and "report.json" in [f.path_in_repo for f in plan.files]
    with pytest.raises(BitconvError, match="no table of results"):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"perplexity": 3}))
        plan_push(folder, "test-user/smol-1.58", report=bad)
    with pytest.raises(BitconvError, match="no such report file"):
        plan_push(folder, "test-user/smol-1.58", report=tmp_path / "missing.json")


def test_card_passes_the_hub_yaml_check_and_loads_as_yaml(hub, folder):
    card = plan_push(folder, "test-user/x").card
    assert card.startswith("---\n")
    yaml.safe_load(card.split("---\n")[1])
    push(folder, "test-user/x")
    assert ("POST", "/api/validate-yaml") in hub.state.requests


def test_large_files_take_the_multipart_lfs_path(hub, folder):
    hub.state.multipart_threshold = 16 * 1024
    hub.state.multipart_chunk = 8 * 1024
    push(folder, "test-user/smol-1.58")
    weights = (folder / "model.safetensors").read_bytes()
    assert hub.state.head_files("test-user/smol-1.58")["model.safetensors"] == weights
    n_parts = -(-len(weights) // (8 * 1024))
    oid = hashlib.sha256(weights).hexdigest()
    assert sum(1 for m, p in hub.state.requests if p.startswith(f"/lfs/part/{oid}/")) == n_parts > 1
    assert ("POST", f"/lfs/complete/{oid}") in hub.state.requests


def test_private_repo_on_a_branch_then_an_unchanged_push(hub, folder):
    result = push(folder, "test-user/smol-1.58", private=True, revision="experiments")
    repo = hub.state.repos["test-user/smol-1.58"]
    assert repo.private
    assert repo.branches["experiments"] == result.commit_oid
    assert "README.md" not in repo.commits[repo.branches["main"]].files  # main untouched
    n_commits = len(repo.commits)
    again = push(folder, "test-user/smol-1.58", revision="experiments")
    assert len(repo.commits) == n_commits  # nothing changed: no new commit, nothing re-uploaded
    assert set(again.skipped_unchanged) == {f.path_in_repo for f in again.plan.files}


def test_dry_run_contacts_nothing(hub, folder, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")  # a dry run needs no token either
    result = push(folder, "test-user/smol-1.58", dry_run=True)
    assert not result.pushed and hub.state.requests == []
    paths = [f.path_in_repo for f in result.plan.files]
    assert paths == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    assert result.plan.files[0].note == "generated model card, replaces the folder's README.md"


def _cli():
    from bitconv.cli.hub import register

    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # keeps `push` a subcommand, as in bitconv's app
        pass

    return app


def test_cli_push_and_dry_run(hub, folder):
    runner = CliRunner()
    res = runner.invoke(_cli(), ["push", str(folder), "test-user/smol-1.58", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "model.safetensors" in res.output and "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in res.output
    assert "nothing was uploaded" in res.output and hub.state.requests == []
    res = runner.invoke(_cli(), ["push", str(folder), "test-user/smol-1.58", "--private"])
    assert res.exit_code == 0, res.output
    assert "pushed 4 files" in res.output and hub.state.repos["test-user/smol-1.58"].private
    assert "push" in runner.invoke(_cli(), ["push", "--help"]).output


# ---- bad input: one-line BitconvErrors that say what to do, and nothing reported as pushed


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_no_token(hub, folder, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(BitconvError, match="no Hugging Face token: set HF_TOKEN") as excinfo:
        push(folder, "test-user/smol-1.58")
    _one_line_error(excinfo)
    assert hub.state.requests == []


def test_token_rejected(hub, folder, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_revoked")
    with pytest.raises(BitconvError, match=r"rejected the token \(401 Unauthorized\)") as excinfo:
        push(folder, "test-user/smol-1.58")
    assert "HF_TOKEN" in _one_line_error(excinfo)
    assert hub.state.repos == {}


def test_no_write_access(hub, folder):
    push(folder, "test-user/smol-1.58")
    with pytest.raises(BitconvError, match=r"may not write to test-user/smol-1.58 \(403"):
        push(folder, "test-user/smol-1.58", token="hf_other_user")


@pytest.mark.parametrize("repo_id", ["no-namespace", "a/b/c", "user/-bad", "user/bad..name", "user/bad name",
                                     "user/" + "x" * 97, "/name", "user/", "usér/model", "user/name\n"])
def test_malformed_repo_id(hub, folder, repo_id):
    with pytest.raises(BitconvError, match="malformed repo id") as excinfo:
        push(folder, repo_id)
    assert "NAMESPACE/NAME" in _one_line_error(excinfo)
    assert hub.state.requests == []


def test_not_a_bitconv_folder(hub, tmp_path, folder):
    with pytest.raises(BitconvError, match="not a folder"):
        push(tmp_path / "missing", "test-user/x")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BitconvError, match="no config.json"):
        push(empty, "test-user/x")
    plain = tmp_path / "plain-hf"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(BitconvError, match="quant_method is None, not 'bitconv'"):
        push(plain, "test-user/x")
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:-100])
    with pytest.raises(BitconvError, match="truncated"):
        push(folder, "test-user/x")
    assert hub.state.requests == []


def test_connection_dropped_mid_upload(hub, folder, monkeypatch):
    """The server hangs up half-way through every LFS upload: huggingface_hub retries (its backoff sleeps
    are skipped here), then bitconv reports the failure; no commit exists."""
    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http.time, "sleep", lambda s: None)
    hub.state.fail["drop_lfs_upload"] = 100
    with pytest.raises(BitconvError, match="network failure talking to .* while uploading the files") as excinfo:
        push(folder, "test-user/smol-1.58")
    assert "nothing was pushed" in _one_line_error(excinfo)
    assert [c.summary for c in hub.state.commits_on("test-user/smol-1.58")] == ["initial commit"]
    assert hub.state.blobs == {}


def test_one_dropped_upload_is_retried(hub, folder, monkeypatch):
    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http.time, "sleep", lambda s: None)
    hub.state.fail["drop_lfs_upload"] = 1
    push(folder, "test-user/smol-1.58")
    files = hub.state.head_files("test-user/smol-1.58")
    assert files["model.safetensors"] == (folder / "model.safetensors").read_bytes()


def test_connection_dropped_at_commit(hub, folder):
    hub.state.fail["drop_commit"] = 1
    with pytest.raises(BitconvError, match="lost while creating the commit") as excinfo:
        push(folder, "test-user/smol-1.58")
    assert "run the command again" in _one_line_error(excinfo)
    assert len(hub.state.commits_on("test-user/smol-1.58")) == 1
    # running it again completes the push; the LFS object already uploaded is not sent twice
    n_puts = sum(1 for m, _ in hub.state.requests if m == "PUT")
    push(folder, "test-user/smol-1.58")
    assert sum(1 for m, _ in hub.state.requests if m == "PUT") == n_puts
    assert hub.state.head_files("test-user/smol-1.58")["config.json"] == (folder / "config.json").read_bytes()


def test_server_unreachable(folder, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with HubServer() as server:
        url = server.url
    # the server is closed: nothing listens on that port any more
    with pytest.raises(BitconvError, match="network failure talking to .* while creating the repo") as excinfo:
        push(folder, "test-user/smol-1.58", endpoint=url, token=TOKEN)
    _one_line_error(excinfo)


def test_offline_mode_and_bad_endpoint(folder, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BitconvError, match="unset HF_HUB_OFFLINE"):
        push(folder, "test-user/smol-1.58", endpoint="http://127.0.0.1:9", token=TOKEN)
    with pytest.raises(BitconvError, match="not an http"):
        push(folder, "test-user/smol-1.58", endpoint="ftp://example", token=TOKEN)


def test_push_a_converted_model_through_the_bitconv_cli(hub, tiny_gpt2, tmp_path, run_cli, monkeypatch):
    import bitconv

    out = bitconv.convert(tiny_gpt2, tmp_path / "gpt2-1.58", progress=False).out
    code, stdout, stderr = run_cli("push", out, "test-user/gpt2-1.58")
    assert code == 0, stderr
    files = hub.state.head_files("test-user/gpt2-1.58")
    for path in out.iterdir():
        if path.name != "README.md":
            assert files[path.name] == path.read_bytes(), path.name
    meta = front_matter(files["README.md"].decode())
    assert "gpt2" in meta["tags"] and "base_model" not in meta  # converted from a local folder
    assert "pushed" in stdout
    # through the real entry point, a rejected token is one line on stderr and exit code 1
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    code, stdout, stderr = run_cli("push", out, "test-user/gpt2-1.58")
    assert code == 1 and "rejected the token (401 Unauthorized)" in stderr
    assert len(stderr.strip().splitlines()) == 1 and "pushed" not in stdout.replace("pushing", "")


def test_card_with_a_real_bitconv_report(hub, tiny_llama, tmp_path):
    """The JSON of `bitconv report --json` over a real compare run becomes the card's accuracy table."""
    import bitconv
    from bitconv.evaluate.compare import compare
    from bitconv.report.build import build_report, write_report
    from support.evalkit import with_tokenizer

    model = with_tokenizer(tiny_llama, tmp_path / "llama")
    (tmp_path / "text.txt").write_text("".join(f"Enter {i}: now is the winter of our discontent.\n" for i in range(60)))
    compare(str(model), tmp_path / "runs", "16,1.58",
            eval_config=EvalConfig("perplexity", str(tmp_path / "text.txt"), context=32, max_tokens=80, latency_repeats=1),
            isolate=False, keep_models=False, progress=False, log=lambda *a: None)
    write_report(build_report(tmp_path / "runs"), json_path=tmp_path / "report.json")
    runs = json.loads((tmp_path / "report.json").read_text())["runs"]
    folder = bitconv.convert(model, tmp_path / "llama-1.58", progress=False).out
    card = plan_push(folder, "test-user/llama-1.58", report=tmp_path / "report.json").card
    assert "From `bitconv report` (`report.json`)" in card
    assert "| model | perplexity | vs baseline | verdict | file bytes | bits/weight | ms/token |" in card
    for run in runs:
        assert f"| {run['label']} | {run['metric']:.4g} |" in card


def test_card_reads_no_file_outside_the_folder(hub, tmp_path, monkeypatch):
    """The source named in an untrusted config is a label, not a path: a README beside it is never read."""
    from support.packed_files import write_bitconv_folder

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "README.md").write_text("---\nlicense: from-outside\n---\n")
    folder = write_bitconv_folder(tmp_path / "plain-1.58", readme="# no front matter\n")
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["source"] = str(outside)
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    card = plan_push(folder, "test-user/plain-1.58").card
    assert "license" not in front_matter(card) and "from-outside" not in card
