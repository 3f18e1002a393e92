import json


def test_convert_inspect_and_dry_run(run_cli, tiny_gpt2, tmp_path):
    code, out, _ = run_cli("convert", tiny_gpt2, "--dry-run")
    assert code == 0 and "conversion plan" in out and "nothing written" in out
    code, out, err = run_cli("convert", tiny_gpt2, "--bits", "1.58", "--out", tmp_path / "q")
    assert code == 0, err
    assert "wrote" in out
    code, out, _ = run_cli("inspect", tmp_path / "q", "--json", tmp_path / "s.json")
    assert code == 0 and "ternary" in out and "totals by category" in out
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["totals"]["linear"]["bits_per_weight"] < 2.01


def test_errors_are_one_line_with_exit_code(run_cli, tiny_gpt2, tmp_path):
    (tmp_path / "exists").mkdir()
    for args, expected in [
        (("convert", tiny_gpt2, "--out", tmp_path / "exists"), "already exists"),
        (("convert", tiny_gpt2, "--bits", "3", "--out", tmp_path / "x"), "unknown --bits"),
        (("convert", tmp_path / "missing", "--out", tmp_path / "x"), "does not exist"),
        (("inspect", tiny_gpt2), "not a bitconv output folder"),
    ]:
        code, out, err = run_cli(*args)
        assert code == 1, (args, out, err)
        assert expected in err and len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err


def test_help_lists_commands(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0 and "convert" in out and "inspect" in out


def test_inspect_shows_whole_tensor_names_in_a_narrow_terminal(run_cli, tiny_gpt2, tmp_path, monkeypatch):
    from bitconv.cli import convert as cli_convert

    code, _, err = run_cli("convert", tiny_gpt2, "--out", tmp_path / "q")
    assert code == 0, err
    monkeypatch.setattr(cli_convert.console, "width", 80)
    code, out, _ = run_cli("inspect", tmp_path / "q")
    assert code == 0
    # shortened in the middle, never at the end: which layer and which projection stay on the screen
    for end in ("0.attn.c_attn.weight", "1.mlp.c_proj.weight", "0.attn.c_proj.weight"):
        assert end in out
