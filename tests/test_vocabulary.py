"""The project speaks of the product, not of how it was developed.

Every tracked text file (``git ls-files``; binary files and ``*.jsonl`` data rows skipped) is scanned for words of
the development process: a working period ("s-e-s-s-i-o-n N"), a tracker number ("i-s-s-u-e N"), a review pass
("r-o-u-n-d N") and result names that carry them (a period number after ``bench_quality``). Versions, dates, machines and
commands say the same thing in the product's terms. The patterns are assembled from pieces so that this file does
not match itself.
"""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_S, _I, _R = "sess" + "ions?", "iss" + "ue", "rou" + "nd"
PATTERNS = {
    # the word in prose; code that names an object so (`session = ...`, `ort.InferenceSession(...)`, `.session`) is not
    # prose, and there the word means a runtime object
    "a working period": re.compile(rf"(?<![.\w]){_S}\b(?!\s*[=(]|\.\w)", re.IGNORECASE),
    "a tracker number": re.compile(rf"\b{_I}[ #-]?\d+", re.IGNORECASE),
    "a review pass": re.compile(rf"\b{_R} \d+", re.IGNORECASE),
    "a result name with a period number": re.compile(r"_s\d+(?=[_.])"),
}
SKIPPED_SUFFIXES = {".jsonl"}


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as exc:  # a source tree without git (an sdist)
        pytest.skip(f"not a git checkout: {exc}")
    files = []
    for name in out.decode().split("\0"):
        path = ROOT / name
        if not name or path.suffix in SKIPPED_SUFFIXES or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        files.append(path)
    return files


def find_hits(text: str) -> list[tuple[int, str, str]]:
    """``(line number, what, the matched text)`` of every development-process word in ``text``."""
    hits = []
    for number, line in enumerate(text.splitlines(), start=1):
        for what, pattern in PATTERNS.items():
            hits += [(number, what, match.group(0)) for match in pattern.finditer(line)]
    return hits


@pytest.mark.parametrize(
    "text, found",
    [
        ("measured in " + "sess" + "ion 11", True),
        ("see " + "iss" + "ue 12", True),
        ("after " + "rou" + "nd 2", True),
        ("docs/results/bench_quality" + "_s" + "10_minilm.json", True),
        ("the figures of that " + "sess" + "ion.", True),
        ("sess = ort.InferenceSession(path); session = requests.Session()", False),
        ("rounded to a multiple of 8; --rounds 2; issued by the Hub", False),
        ("docs/results/quality/minilm_nm2of4_240steps.json, version 0.2.0, 2026-12-01", False),
    ],
)
def test_the_patterns(text, found):
    assert bool(find_hits(text)) is found


def test_no_development_process_vocabulary():
    hits = []
    for path in _tracked_text_files():
        for number, what, matched in find_hits(path.read_text(encoding="utf-8")):
            hits.append(f"{path.relative_to(ROOT)}:{number}: {what}: {matched!r}")
    assert not hits, f"{len(hits)} development-process words (speak of versions, dates, machines):\n" + "\n".join(hits)
