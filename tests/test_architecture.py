"""The architecture, pinned: what each subsystem may import, and how large its parts grow.

The rules are the ones each sub-package's `__init__` docstring states; README.md's
"Architecture" section shows them. A new import across the lines fails here first.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "service"
# Where each part of `service` may import from (besides itself). The top-level modules
# are the foundation every subsystem stands on; `cli` is the one part that may use all.
FOUNDATION = {"errors", "status", "settings", "auth", "files"}
MAY_IMPORT: dict[str, set[str]] = {
    "errors": set(),
    "status": set(),
    "files": set(),
    "auth": {"errors", "files"},
    "settings": {"auth"},
    "sdk": {"errors", "status", "settings"},
    "observe": {"sdk", "errors", "status"},
    "runs": {"sdk", "observe", *FOUNDATION},
    "server": {"sdk", "runs", "observe", *FOUNDATION},
    "client": {"errors", "status"},
    "deployments": {"client", *FOUNDATION},
    "cli": {"sdk", "runs", "server", "observe", "client", "deployments", *FOUNDATION},
    "__main__": {"cli"},
    # The public API: its names, imported lazily (see `__getattr__`).
    "__init__": {"sdk", "server", *FOUNDATION},
}
# The size of a part a newcomer can read at once; the exceptions say why.
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 60
LONGER: dict[str, int] = {
    # A table: every route with its OpenAPI declaration, one entry each.
    "service/server/routes.py:route_table": 140,
}


def modules() -> Iterator[Path]:
    yield from sorted(PACKAGE.rglob("*.py"))


def part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def imported(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """Each `service.X` a module imports (at any depth: lazy imports count too)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "service":
                    yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "service":
                yield node.lineno, node.module, [a.name for a in node.names]


def test_every_part_has_its_rule() -> None:
    assert {part_of(path) for path in modules()} <= set(MAY_IMPORT)


def test_each_part_imports_only_what_its_rule_allows() -> None:
    broken = []
    for path in modules():
        part = part_of(path)
        for line, module, names in imported(path):
            parts = module.split(".")
            # `from service import errors` imports service.errors; the root itself gives
            # only its version (its other names would load the server).
            targets = [parts[1]] if len(parts) > 1 else [n for n in names if n != "__version__"]
            for target in targets:
                if target != part and target not in MAY_IMPORT[part]:
                    broken.append(f"{path.relative_to(ROOT)}:{line}: {part} imports {target}")
    assert broken == []


def test_one_level_of_sub_packages() -> None:
    nested = {str(init.parent.relative_to(PACKAGE)) for init in PACKAGE.glob("*/*/**/__init__.py")}
    # Alembic's script directory (env.py, versions/) is a directory by Alembic's design.
    assert nested <= {"runs/migrations", "runs/migrations/versions"}


def test_every_sub_package_says_what_it_owns_and_may_import() -> None:
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        if init.parent.name in MAY_IMPORT:
            doc = ast.get_docstring(ast.parse(init.read_text())) or ""
            assert "May import" in doc, init


def _sizes() -> Iterator[tuple[str, str, int, int]]:
    for path in modules():
        name = str(path.relative_to(ROOT))
        text = path.read_text()
        yield name, "module", len(text.splitlines()), MAX_MODULE_LINES
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                limit = MAX_CLASS_LINES
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                limit = MAX_FUNCTION_LINES
            else:
                continue
            assert node.end_lineno is not None
            where = f"{name}:{node.name}"
            yield (
                where,
                type(node).__name__,
                node.end_lineno - node.lineno + 1,
                LONGER.get(where, limit),
            )


def test_modules_classes_and_functions_stay_readable() -> None:
    too_long = [
        f"{where} ({kind}): {n} lines > {limit}" for where, kind, n, limit in _sizes() if n > limit
    ]
    assert too_long == []


# What a light part must not load: the server's dependencies, and for the client (a
# caller's dependency) and the errors it reads, the server's other third-party ones too.
SERVER_DEPENDENCIES = ("sqlalchemy", "starlette", "uvicorn", "prometheus_client", "alembic")
CALLER_FORBIDDEN = (*SERVER_DEPENDENCIES, "pydantic", "psutil", "yaml", "orjson")
LIGHT_PARTS = {
    "service.client": (*CALLER_FORBIDDEN, "service.server", "service.runs", "service.sdk"),
    "service.errors": (*CALLER_FORBIDDEN, "httpx"),
    "service.sdk": SERVER_DEPENDENCIES,  # may load pydantic
}


@pytest.mark.parametrize(("module", "forbidden"), LIGHT_PARTS.items())
def test_light_parts_load_no_server_dependency(module: str, forbidden: tuple[str, ...]) -> None:
    code = f"import {module}, sys; print(*sys.modules)"
    found = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True
    )
    loaded = found.stdout.split()
    assert module in loaded
    heavy = [m for m in loaded if any(m == f or m.startswith(f"{f}.") for f in forbidden)]
    assert heavy == []


def test_one_version_source() -> None:
    import tomllib

    import service

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    from importlib.metadata import version

    assert version("pipeserve") == service.__version__
    assert (PACKAGE / "py.typed").exists()
