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


def test_recover_help_names_the_per_task_defaults(run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # rich wraps the option table at the terminal width
    code, out, _ = run_cli("recover", "--help")
    text = " ".join(out.replace("│", " ").split())
    assert code == 0
    for said in ("--distill --hidden-weight 1 --attention-weight 1 --augment 2 --lr 2e-4",
                 "default: lm and classify yes, image-classify no", "default: classify 1, lm and image-classify 0",
                 "default: classify 1, image-classify 0", "0: off (default: classify 2)", "classify 2e-4"):
        assert said in text, said


def test_recover_options_left_out_take_the_task_defaults(run_cli, monkeypatch, tmp_path):
    from types import SimpleNamespace

    from bitconv.train import pipeline
    from bitconv.train.config import RecoverConfig

    seen = []
    monkeypatch.setattr(pipeline, "recover", lambda *a, config, **kw: seen.append(config) or SimpleNamespace(metrics={}))
    for switch in ([], ["--no-distill"], ["--hidden-weight", "0", "--attention-weight", "0", "--augment", "0"]):
        code, _, err = run_cli("recover", "model", "--out", tmp_path / "o", *switch)
        assert code == 0, err
    assert seen[0] == RecoverConfig(task="classify")
    assert not seen[1].distill and seen[1].hidden_weight == seen[1].attention_weight == seen[1].augment == 0
    assert seen[2].distill and seen[2].hidden_weight == seen[2].attention_weight == seen[2].augment == 0
