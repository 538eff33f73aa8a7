"""The house rules a newcomer relies on: package boundaries without cycles, small modules, a
README whose first screen says how to start, and docs whose links all resolve."""

import ast
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGES = ("server", "client", "common")
MAX_LINES = 400
README_MAX_LINES = 250


def product_modules() -> dict[str, Path]:
    return {f"{p.parent.name}.{p.stem}": p for pkg in PACKAGES for p in sorted((ROOT / pkg).glob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """Every FedSilo module `path` imports, at module level or inside a function (a lazy import
    is still a dependency)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES}
    return found


def dependency_graph() -> dict[str, set[str]]:
    modules = product_modules()
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles_among_the_packages():
    assert find_cycle(dependency_graph()) is None, " -> ".join(find_cycle(dependency_graph()))


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_common_never_imports_server_or_client():
    offenders = {name: sorted(deps) for name, deps in dependency_graph().items()
                 if name.startswith("common.") and any(d.split(".")[0] in ("server", "client") for d in deps)}
    assert not offenders, offenders


def test_no_product_module_over_the_limit():
    long = {name: n for name, path in product_modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_test_data_generators_live_outside_the_product():
    assert not (ROOT / "common" / "pii_synth.py").exists()


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    assert doc.exists(), doc
    # Code is not a link: fenced blocks and `spans` (fl-predict's `[words](TYPE)` output) are left out.
    text = re.sub(r"`[^`]+`", "", re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(target)
    assert not broken, f"{doc.name}: {broken}"


def anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return out


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, len(lines)
    first_screen = "\n".join(lines[:20])
    assert "make demo" in first_screen and "make test" in first_screen  # the two commands, up front
    assert "docs/security.md" in "\n".join(lines) and "bench/README.md" in "\n".join(lines)
