"""The package's layout holds: each layer imports only the layers below it, there is no import circle, the
rules in `core` import neither Peewee nor any other part of the service, and no module outgrows what one
reader takes in (ARCHITECTURE.md)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "otp_service"
# Lowest first: a module may import its own layer and those before it.
LAYERS = (
    "core",
    "config",
    "metrics",
    "db",
    "audit",
    "webhooks",
    "persistence",
    "service",
    "reports",
    "http",
    "cli",
    "__main__",
)
LONGEST = 450  # lines; declarative data (the OpenAPI schemas) and migrations aside
DECLARATIVE = {"http/schemas.py"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project's modules `name` imports, at the top or inside a function (a lazy import is a dependency too);
    a submodule's import of its own package (`from . import x`) is Python's mechanics, not a dependency."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
            for candidate in (target, *(f"{target}.{alias.name}" for alias in node.names)):
                if candidate in modules and candidate != name and not name.startswith(candidate + "."):
                    found.add(candidate)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_layers_import_only_downwards():
    upward = [
        (module, target)
        for module, targets in _graph().items()
        for target in targets
        if _layer(target) != "__init__"
        and _layer(module) != "__init__"
        and LAYERS.index(_layer(target)) > LAYERS.index(_layer(module))
    ]
    assert upward == []


def test_there_is_no_import_circle():
    graph, circles = _graph(), []

    def visit(module: str, path: tuple[str, ...]) -> None:
        for target in graph[module]:
            if target in path:
                circles.append(path[path.index(target) :] + (target,))
            elif target not in done:
                visit(target, (*path, target))
        done.add(module)

    done: set[str] = set()
    for module in graph:
        if module not in done:
            visit(module, (module,))
    assert circles == []


def test_the_rules_are_pure():
    for path in (PACKAGE / "core").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1, f"{path.name} imports outside core: {node.module}"
                assert not (node.module or "").startswith(("peewee", "playhouse", "psycopg2", "tornado")), path.name
            elif isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] in ("peewee", "psycopg2", "tornado") for a in node.names)


def test_no_module_outgrows_one_reading():
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if "migrations" not in path.parts
        and str(path.relative_to(PACKAGE)) not in DECLARATIVE
        and (n := len(path.read_text().splitlines())) > LONGEST
    }
    assert long == {}
