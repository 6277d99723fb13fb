"""The repository stands on its own: what the code and the docs cite lives in the repository."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["lossval_fast", "csrc", "docs", "tests", "bench", "README.md", "CMakeLists.txt", "Makefile",
           "pyproject.toml"]
SUFFIXES = {".py", ".md", ".cpp", ".cu", ".h", ".cuh", ".txt", ".toml", ""}
# the workspace's specification files, which users of the package do not have
OUTSIDE = re.compile(r"shared/docs|LOSSVAL_SPEC|ECOVAL_SPEC|ARCHITECTURE\.md|BENCHMARKS\.md|BUILD_NOTES")
DOC_REFERENCE = re.compile(r"\bdocs/([A-Za-z0-9_\-]+\.md)")


def _files():
    for name in SOURCES:
        path = ROOT / name
        if path.is_file():
            yield path
        elif path.is_dir():
            for f in sorted(path.rglob("*")):
                if f.is_file() and f.suffix in SUFFIXES and "results" not in f.parts and "runs" not in f.parts \
                        and "__pycache__" not in f.parts and f.name != Path(__file__).name:
                    yield f


def test_nothing_cites_a_file_outside_the_repository():
    found = []
    for f in _files():
        for number, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{f.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not found, "cites a file outside the repository:\n" + "\n".join(found)


def test_every_cited_doc_exists():
    missing = []
    for f in _files():
        for number, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            for name in DOC_REFERENCE.findall(line):
                if not (ROOT / "docs" / name).exists():
                    missing.append(f"{f.relative_to(ROOT)}:{number}: docs/{name}")
    assert not missing, "cites a doc that is not in docs/:\n" + "\n".join(missing)
