"""Where the tests find things: the repository, fixture text kept in the repo, and ../shared/data when present."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# the first 200,000 characters of the public-domain Shakespeare text, so a plain clone trains its tiny tokenizers
FIXTURE_TEXT = FIXTURES / "shakespeare_200k.txt"
# real data sets beside the repository (not in a plain clone): tests that need them skip and say so
SHARED_DATA = REPO.parent / "shared" / "data"
