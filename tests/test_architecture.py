"""Imports between kbqa's packages run one way: down the layers of docs/architecture.md.

Every module of app/, ingest/, finetune/ and eval/ belongs to a layer (``LAYERS``, bottom
first); a module takes the layer of its longest matching prefix. A module may import its own
layer and the layers below it, never a layer above.

Imports are read from the source with ``ast``, at any depth:

- module level;
- inside functions: a deferred import (kept for load time, e.g. torch or FastAPI only when a
  command needs them) is still a dependency, so it must point down like any other;
- under ``if TYPE_CHECKING:``: these count for the direction too. An annotation naming an
  upper layer's type couples the two modules as much as a runtime import does (the code has
  none today).

Within a layer, runtime imports (module level and inside functions) may not form a cycle: a
cycle is what an import moved into a function, or to the bottom of a file, used to hide.
``TYPE_CHECKING`` imports do not count for cycles: they never run, and a type-only
back-reference (the worker naming the service that owns it) is what they are for.

Two rules from the design card ride along: route modules (``app.api.routes.*``) are leaves,
imported only where the routers are mounted (``app.api.router``, ``app.main``), so no two routes
import each other; and nothing below the interface layer imports the web framework.

Relative imports are resolved against the importing module (the project has none today).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "ingest", "finetune", "eval")

# Bottom first. The same table, with what each layer holds and why, is in docs/architecture.md.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("settings", ("app.settings",)),
    # backends, prompts, model references, and the chat service (generation gate + backend)
    ("llm", ("app.llm",)),
    # loaders, splitter, embeddings, store, keyword index, catalog, worker, the KB service
    ("ingest", ("ingest",)),
    # search (dense/keyword/hybrid, fusion, thresholds), the LangChain retriever with its
    # relevance gate, the reranker, passage/question overlap
    ("retrieval", ("app.rag.search", "app.rag.retriever", "app.rag.reranker", "app.rag.focus")),
    # chain, chat model, citations, quoting, and the RAG service that runs them
    ("rag", ("app.rag", "app.services.rag")),
    # the composition root: builds every service from the settings (container, factory)
    ("composition", ("app.services",)),
    ("finetune/eval", ("finetune", "eval")),
    ("interface", ("app.api", "app.web", "app.main", "app.cli")),
)
# the namespace package of the app layers: empty, in no layer of its own
UNLAYERED = frozenset({"app"})
ROUTES = "app.api.routes."
MOUNTS_ROUTES = frozenset({"app.api.router", "app.main"})
WEB_FRAMEWORK = frozenset({"fastapi", "starlette", "sse_starlette", "uvicorn"})


@dataclass(frozen=True)
class Import:
    file: str
    line: int
    importer: str
    imported: str
    deferred: bool  # inside a function
    type_only: bool  # under ``if TYPE_CHECKING:``

    @property
    def project(self) -> bool:
        return self.imported.partition(".")[0] in PACKAGES

    def where(self) -> str:
        how = " (in a function)" if self.deferred else ""
        how += " (TYPE_CHECKING)" if self.type_only else ""
        return f"{self.file}:{self.line}{how}"


def layer_of(module: str) -> tuple[int, str] | None:
    """(index, name) of the layer whose prefix matches ``module`` longest; None: no layer."""
    best: tuple[int, int, str] | None = None
    for index, (name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[0]
            ):
                best = (len(prefix), index, name)
    return None if best is None else (best[1], best[2])


def module_of(path: Path, root: Path = ROOT) -> tuple[str, bool]:
    """(dotted name, is a package) of a source file."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def project_files(root: Path = ROOT) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            files[module_of(path, root)[0]] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Walker(ast.NodeVisitor):
    def __init__(self, file: str, module: str, is_package: bool, known: frozenset[str]) -> None:
        self.file = file
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.deferred = 0
        self.type_only = 0
        self.found: list[Import] = []

    def _add(self, node: ast.stmt, imported: str) -> None:
        if any(f.line == node.lineno and f.imported == imported for f in self.found):
            return  # ``from x import a, b``: one import of x
        self.found.append(
            Import(
                self.file,
                node.lineno,
                self.module,
                imported,
                deferred=self.deferred > 0,
                type_only=self.type_only > 0,
            )
        )

    def _in_function(self, node: ast.AST) -> None:
        self.deferred += 1
        self.generic_visit(node)
        self.deferred -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = _in_function

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.visit(node.test)
        self.type_only += 1
        for statement in node.body:
            self.visit(statement)
        self.type_only -= 1
        for statement in node.orelse:
            self.visit(statement)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, self._longest_known(alias.name))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            package = self.package.split(".") if self.package else []
            up = node.level - 1
            if up > len(package):
                raise ValueError(f"{self.file}:{node.lineno}: relative import beyond the top")
            anchor = ".".join(package[: len(package) - up])
            base = f"{anchor}.{base}" if anchor and base else anchor or base
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            # ``from pkg import module`` imports the module; ``from pkg import name``, pkg
            self._add(node, candidate if candidate in self.known else base)

    def _longest_known(self, name: str) -> str:
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in self.known:
                return ".".join(parts[:end])
        return name


def imports_in(
    source: str,
    module: str,
    *,
    is_package: bool = False,
    file: str = "<string>",
    known: Iterable[str] | None = None,
) -> list[Import]:
    """The imports of one module's source, at any depth (``Import.project``: the project's)."""
    walker = _Walker(
        file, module, is_package, frozenset(project_files() if known is None else known)
    )
    walker.visit(ast.parse(source, file))
    return walker.found


def all_imports(root: Path = ROOT) -> list[Import]:
    files = project_files(root)
    known = frozenset(files)
    found: list[Import] = []
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        rel = str(path.relative_to(root))
        found += imports_in(
            path.read_text(encoding="utf-8"), module, is_package=is_package, file=rel, known=known
        )
    return found


def upward(imports: Iterable[Import]) -> list[str]:
    """One line per import that goes up a layer (or touches a module in no layer)."""
    problems = []
    for imp in imports:
        if not imp.project:
            continue
        low, high = layer_of(imp.importer), layer_of(imp.imported)
        if low is None or high is None:
            missing = imp.importer if low is None else imp.imported
            problems.append(f"{imp.where()}: {missing} is in no layer (add it to LAYERS)")
        elif high[0] > low[0]:
            problems.append(
                f"{imp.where()}: {low[1]} -> {high[1]}: {imp.importer} imports {imp.imported}"
            )
    return problems


def cycles(imports: Iterable[Import]) -> list[list[Import]]:
    """Runtime import cycles between modules, each as the imports that close it."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in imports:
        if imp.project and not imp.type_only and imp.importer != imp.imported:
            edges.setdefault(imp.importer, {}).setdefault(imp.imported, imp)
    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return [
        [edges[a][b] for a in component for b in sorted(edges.get(a, {})) if b in component]
        for component in components
    ]


def route_imports(imports: Iterable[Import]) -> list[str]:
    """Imports of a route module from anywhere but where the routers are mounted."""
    return [
        f"{imp.where()}: {imp.importer} imports the route module {imp.imported}"
        for imp in imports
        if imp.imported.startswith(ROUTES) and imp.importer not in MOUNTS_ROUTES
    ]


def web_framework_below_interface(imports: Iterable[Import]) -> list[str]:
    interface = next(index for index, (name, _) in enumerate(LAYERS) if name == "interface")
    wrong = []
    for imp in imports:
        layer = layer_of(imp.importer)
        if imp.imported.partition(".")[0] in WEB_FRAMEWORK and layer and layer[0] < interface:
            wrong.append(f"{imp.where()}: {imp.importer} ({layer[1]}) imports {imp.imported}")
    return wrong


# ----------------------------------------------------------------------------- the rules


def test_every_module_has_a_layer() -> None:
    missing = [m for m in project_files() if m not in UNLAYERED and layer_of(m) is None]
    assert not missing, f"modules in no layer (add them to LAYERS): {missing}"


def test_imports_run_down_the_layers() -> None:
    problems = upward(all_imports())
    assert not problems, "imports against the layer direction (docs/architecture.md):\n" + (
        "\n".join(problems)
    )


def test_no_import_cycles() -> None:
    found = cycles(all_imports())
    lines = [
        "; ".join(f"{imp.importer} -> {imp.imported} [{imp.where()}]" for imp in cycle)
        for cycle in found
    ]
    assert not found, "runtime import cycles:\n" + "\n".join(lines)


def test_routes_are_leaves() -> None:
    wrong = route_imports(all_imports())
    assert not wrong, "only app.api.router and app.main import route modules:\n" + "\n".join(wrong)


def test_only_the_interface_knows_the_web_framework() -> None:
    wrong = web_framework_below_interface(all_imports())
    assert not wrong, "below the interface layer, no web framework:\n" + "\n".join(wrong)


def test_layers_are_written_down() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for name, prefixes in LAYERS:
        assert name in doc, f"layer {name!r} is not described in docs/architecture.md"
        for prefix in prefixes:
            assert f"`{prefix}" in doc, f"{prefix} is not in docs/architecture.md"


# ------------------------------------------------------------- the walker can fail at all


def test_walker_flags_upward_imports() -> None:
    source = (
        "from __future__ import annotations\n"  # 1: not the project's
        "from typing import TYPE_CHECKING\n"  # 2
        "from app.llm.base import ChatMessage\n"  # 3: down (llm)
        "from app.api.deps import get_settings\n"  # 4: up (interface)
        "import app.services.factory\n"  # 5: up (composition)
        "if TYPE_CHECKING:\n"  # 6
        "    from app.services.container import Services\n"  # 7: up, type only
        "else:\n"  # 8
        "    from app.rag.focus import coverage\n"  # 9: same layer, runtime
        "def f():\n"  # 10
        "    from eval.compare import run_compare\n"  # 11: up, in a function
        "    from ..rag import chain\n"  # 12: relative: app.rag.chain, up (rag)
        "    from . import reranker\n"  # 13: relative: app.rag.reranker, same layer
    )
    found = imports_in(source, "app.rag.retriever", file="synthetic.py")
    assert [imp.imported for imp in found if not imp.project] == ["__future__", "typing"]
    by_line = {imp.line: imp for imp in found if imp.project}
    assert sorted(by_line) == [3, 4, 5, 7, 9, 11, 12, 13]
    assert by_line[7].type_only and not by_line[9].type_only
    assert by_line[11].deferred and not by_line[4].deferred
    assert by_line[5].imported == "app.services.factory"
    assert by_line[12].imported == "app.rag.chain"
    assert by_line[13].imported == "app.rag.reranker"
    problems = upward(found)
    assert problems == [
        "synthetic.py:4: retrieval -> interface: app.rag.retriever imports app.api.deps",
        "synthetic.py:5: retrieval -> composition: app.rag.retriever imports app.services.factory",
        "synthetic.py:7 (TYPE_CHECKING): retrieval -> composition: "
        "app.rag.retriever imports app.services.container",
        "synthetic.py:11 (in a function): retrieval -> finetune/eval: "
        "app.rag.retriever imports eval.compare",
        "synthetic.py:12 (in a function): retrieval -> rag: "
        "app.rag.retriever imports app.rag.chain",
    ]
    # the module named in the issue: the chat model reaching up into the composition layer
    reach_up = imports_in("from app.services.factory import build_chat\n", "app.rag.chat_model")
    assert len(upward(reach_up)) == 1
    # a module in no layer is reported, not skipped
    assert upward(imports_in("import app.settings\n", "app.newpackage.x")) == [
        "<string>:1: app.newpackage.x is in no layer (add it to LAYERS)"
    ]


def test_walker_flags_a_cycle_hidden_in_a_function() -> None:
    known = {"app.api.routes.a", "app.api.routes.b", "app.api.routes"}
    a = imports_in(
        "from app.api.routes.b import helper\n", "app.api.routes.a", known=known, file="a.py"
    )
    b_hidden = imports_in(
        "def route():\n    from app.api.routes.a import handler\n",
        "app.api.routes.b",
        known=known,
        file="b.py",
    )
    assert upward(a + b_hidden) == []  # one layer: direction alone cannot see it
    (cycle,) = cycles(a + b_hidden)
    assert {(imp.importer, imp.imported) for imp in cycle} == {
        ("app.api.routes.a", "app.api.routes.b"),
        ("app.api.routes.b", "app.api.routes.a"),
    }
    b_typed = imports_in(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from app.api.routes.a import handler\n",
        "app.api.routes.b",
        known=known,
    )
    assert cycles(a + b_typed) == []


def test_walker_flags_route_imports_and_the_web_framework_below() -> None:
    known = {"app.api.routes.jobs", "app.api.routes.knowledge_bases", "app.api.router"}
    between_routes = imports_in(
        "from app.api.routes.knowledge_bases import api_error\n",
        "app.api.routes.jobs",
        known=known,
        file="jobs.py",
    )
    assert route_imports(between_routes) == [
        "jobs.py:1: app.api.routes.jobs imports the route module app.api.routes.knowledge_bases"
    ]
    mounting = imports_in(
        "from app.api.routes import jobs\n", "app.api.router", known=known, file="router.py"
    )
    assert mounting[0].imported == "app.api.routes.jobs"
    assert route_imports(mounting) == []
    framework = imports_in(
        "def f():\n    from fastapi import HTTPException\n", "ingest.service", file="s.py"
    )
    assert web_framework_below_interface(framework) == [
        "s.py:2 (in a function): ingest.service (ingest) imports fastapi"
    ]
    assert (
        web_framework_below_interface(
            imports_in("from fastapi import APIRouter\n", "app.api.routes.jobs")
        )
        == []
    )
