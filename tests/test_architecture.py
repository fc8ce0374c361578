"""The host's modules import one another one way only: serve → app → instance → interfaces → registry →
backend (and the `nnspin-text` crate, tokenizers and templates), with no circle anywhere (a parent and its own child included), so each layer can be read
and changed apart. Read from the source: every `crate::…`, `super::…` and child-module path of each file."""

import re
from pathlib import Path

from support import ROOT

SRC = ROOT / "host" / "src"


def module_of(file: Path) -> tuple:
    parts = list(file.relative_to(SRC).with_suffix("").parts)
    return tuple(parts[:-1] if parts[-1] in ("mod", "lib", "main") else parts)


def code_of(file: Path) -> str:
    """The file without comments and without its unit tests (an inline `mod tests` at the end)."""
    text = file.read_text().split("#[cfg(test)]\nmod tests")[0]
    text = re.sub(r"pub\((crate|super|in [^)]*)\)", "pub", text)
    return re.sub(r"//[^\n]*", "", text)


def paths_in(code: str) -> list[list[str]]:
    """Every `crate::…` / `super::…` path, `{…}` groups expanded."""
    paths = []
    for m in re.finditer(r"\b(crate|super)((?:::(?:super|[A-Za-z_]\w*))*)(::\{)?", code):
        head = [m.group(1)] + [p for p in m.group(2).split("::") if p]
        if not m.group(3):
            paths.append(head)
            continue
        depth, end = 1, m.end()
        while depth and end < len(code):
            depth += {"{": 1, "}": -1}.get(code[end], 0)
            end += 1
        for item in re.split(r",(?![^{]*\})", code[m.end():end - 1]):
            item = item.strip().split(" as ")[0].replace("{", "").replace("}", "")
            if item:
                paths.append(head + [p for p in item.split("::") if p])
    return paths


def import_graph() -> dict[tuple, set[tuple]]:
    modules = {module_of(f): f for f in SRC.rglob("*.rs")}
    edges = {module: set() for module in modules}
    for module, file in modules.items():
        code = code_of(file)
        targets = []
        for path in paths_in(code):
            base, rest = ((), path[1:]) if path[0] == "crate" else (module[:-1], path[1:])
            while rest and rest[0] == "super":
                base, rest = base[:-1], rest[1:]
            targets.append(tuple(base) + tuple(rest))
        # A child module named without `crate::` (`use batcher::Batcher`).
        targets += [module + (name,) for name in re.findall(r"(?<![:\w])([a-z_]\w*)::", code)]
        for target in targets:
            known = next((target[:k] for k in range(len(target), 0, -1) if target[:k] in modules), None)
            if known and known != module:
                edges[module].add(known)
    return edges


def cycles(edges: dict[tuple, set[tuple]]) -> list[list[tuple]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_reader_sees_the_imports_there_are():
    edges = import_graph()
    assert ("backend", "decoder") in edges[("backend", "openvino")]
    assert ("backend", "onnxruntime", "batcher") in edges[("backend", "onnxruntime")]
    assert ("registry",) in edges[("interfaces", "view")]


def test_no_module_of_the_host_imports_its_importers():
    found = [sorted("::".join(m) for m in component) for component in cycles(import_graph())]
    assert not found, f"modules importing each other: {found}"


def test_engines_know_nothing_of_the_interfaces_the_registry_or_tokenizers():
    for module, targets in import_graph().items():
        if module[:1] == ("backend",):
            outside = {t for t in targets if t[:1] != ("backend",)}
            assert not outside, f"{'::'.join(module)} imports {outside}"
    for file in (SRC / "backend").rglob("*.rs"):
        assert "nnspin_text" not in code_of(file), f"{file} uses the tokenizers of nnspin-text"
