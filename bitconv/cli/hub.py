"""`bitconv push`: the Typer command over bitconv.hub.push (no logic here)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

console = Console(soft_wrap=True)  # long paths and messages stay on one line (greppable, copyable)

PUSH_EPILOG = (
    "Examples:\n\n"
    "  bitconv push ./gpt2-1.58 my-user/gpt2-1.58\n\n"
    "  bitconv push ./gpt2-1.58 my-user/gpt2-1.58 --private --report runs/report.json\n\n"
    "  bitconv push ./gpt2-1.58 my-user/gpt2-1.58 --revision experiments --dry-run\n\n"
    "The token comes from HF_TOKEN or the saved login (`hf auth login`); the endpoint from --endpoint or HF_ENDPOINT."
)


def push(
    folder: Annotated[Path, typer.Argument(help="A bitconv output folder (from `bitconv convert` or `bitconv recover`).")],
    repo_id: Annotated[str, typer.Argument(help="Target repo, NAMESPACE/NAME, e.g. my-user/gpt2-1.58.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo private (ignored if it exists).")] = False,
    revision: Annotated[str, typer.Option(help="Branch to commit to; created from main if missing.")] = "main",
    report: Annotated[Optional[Path], typer.Option(help="A `bitconv report` JSON whose table goes into the model card "
                                                        "(default: a report*.json in the folder).")] = None,
    endpoint: Annotated[Optional[str], typer.Option(help="Hub URL (default: HF_ENDPOINT or https://huggingface.co).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the files, sizes and model card; upload nothing.")] = False,
) -> None:
    """Publish a converted folder to the Hugging Face Hub in one commit, with a generated model card."""
    from bitconv.hub.push import format_plan
    from bitconv.hub.push import push as run_push

    result = run_push(folder, repo_id, private=private, revision=revision, dry_run=dry_run, endpoint=endpoint,
                      report=report)
    if dry_run:
        console.print(format_plan(result.plan), markup=False, highlight=False)
        console.print("dry run: nothing was uploaded")
        return
    unchanged = f" ({len(result.skipped_unchanged)} unchanged files not sent again)" if result.skipped_unchanged else ""
    console.print(f"pushed {len(result.plan.files)} files ({result.plan.n_bytes:,} bytes) to {result.repo_url}{unchanged}",
                  highlight=False)
    console.print(f"commit {result.commit_oid}: {result.commit_url}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("push", epilog=PUSH_EPILOG)(push)

