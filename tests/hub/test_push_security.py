"""`bitconv push` with hostile folders and servers (issue 12): links out of the folder and FIFOs are refused before
anything is read or sent, the token never reaches the terminal, plain http is refused unless the Hub is on this
machine, and --revision must be a branch name. Each refusal is one line, exit code 1 (2 for usage), and the folder
is unchanged."""

from __future__ import annotations

import os

import pytest

from bitconv.errors import BitconvError, HubError, OptionError
from bitconv.hub.push import push, resolve_endpoint
from support.hub_server import TEST_TOKEN
from support.isolation import bitconv_process, one_line_error, snapshot


@pytest.mark.parametrize("make", ["file", "folder"])
def test_links_out_of_the_folder_are_refused_before_anything_is_sent(hub, folder, tmp_path, run_cli, make):
    secret = tmp_path / "secret"
    if make == "file":
        secret.write_text("ssh key")
    else:
        secret.mkdir()
        (secret / "id_rsa").write_text("ssh key")
    (folder / "extra").symlink_to(secret)
    before = snapshot(tmp_path)
    code, _, err = run_cli("push", folder, "test-user/x")
    assert code == 1 and "is a symbolic link to" in one_line_error(err) and "outside the folder" in err
    assert hub.state.requests == [] and snapshot(tmp_path) == before


def test_a_link_inside_the_folder_is_uploaded_as_its_content(hub, folder):
    (folder / "vocab.json").symlink_to(folder / "tokenizer.json")
    push(folder, "test-user/x")
    files = hub.state.head_files("test-user/x")
    assert files["vocab.json"] == (folder / "tokenizer.json").read_bytes()


def test_a_fifo_in_the_folder_is_refused_without_hanging(folder):
    os.mkfifo(folder / "notes.txt")
    code, _, err = bitconv_process("push", folder, "test-user/x", "--dry-run", timeout=60)
    assert code == 1 and "not a regular file" in one_line_error(err), err


def test_a_server_that_echoes_headers_never_gets_the_token_printed(hub, folder, run_cli):
    hub.state.fail["echo_headers"] = 10
    with pytest.raises(HubError) as info:
        push(folder, "test-user/x")
    message = str(info.value)
    assert "answered 500" in message and "Bearer ***" in message and TEST_TOKEN not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # --debug shows no echoed original
    hub.state.fail["echo_headers"] = 10
    code, out, err = run_cli("push", folder, "test-user/x")
    assert code == 1 and "Bearer ***" in one_line_error(err) and TEST_TOKEN not in out + err


@pytest.mark.parametrize("endpoint", ["http://hub.example.org", "http://10.0.0.1:8080", "http://127.0.0.1.example.com",
                                      "http://[fe80::1]:80"])
def test_plain_http_is_refused_when_the_token_would_leave_this_machine(folder, endpoint):
    with pytest.raises(HubError, match="plain http: the token would cross the network unencrypted"):
        push(folder, "test-user/x", endpoint=endpoint, token=TEST_TOKEN)


@pytest.mark.parametrize("endpoint", ["https://huggingface.co", "http://127.0.0.1:8080", "http://localhost:1",
                                      "http://[::1]:9", "http://127.8.9.10"])
def test_https_and_loopback_endpoints_are_accepted(endpoint):
    assert resolve_endpoint(endpoint) == endpoint


@pytest.mark.parametrize("revision", ["", "../main", "a..b", "-x", "a b", "x.lock", "a//b", "a/", ".hidden", "a/.b",
                                      "refs/heads/x\n", "x" * 201, "main@{1}"])
def test_malformed_revisions_are_refused(hub, folder, run_cli, revision):
    with pytest.raises(OptionError, match="malformed --revision"):
        push(folder, "test-user/x", revision=revision)
    code, _, err = run_cli("push", folder, "test-user/x", "--revision", revision)
    assert code == 1 and "malformed --revision" in one_line_error(err)
    assert hub.state.requests == []


@pytest.mark.parametrize("revision", ["main", "experiments/v2", "release-1.0", "user_branch"])
def test_branch_names_are_accepted(hub, folder, revision):
    assert push(folder, "test-user/x", revision=revision).pushed


def test_errors_are_bitconv_errors(hub, folder):
    (folder / "bad").symlink_to("/etc/hostname")
    with pytest.raises(BitconvError):
        push(folder, "test-user/x", dry_run=True)
