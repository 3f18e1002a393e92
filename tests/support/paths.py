"""Where the tests find things: the repository, fixture text kept in the repo, and ../shared/data when present."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# the first 200,000 characters of the public-domain Shakespeare text, so a plain clone trains its tiny tokenizers
FIXTURE_TEXT = FIXTURES / "shakespeare_200k.txt"
# real data sets beside the repository (not in a plain clone): tests that need them skip and say so
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A file under ../shared/data, or a skip that says what is missing (a plain clone has no ../shared)."""
    import pytest

    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (real data sets live in ../shared/data beside the repository)")
    return path
