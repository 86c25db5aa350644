"""The layering of docs/architecture.md: every import inside the package points down (or stays in its package)."""

import ast
from pathlib import Path

import equirecon

PACKAGE = Path(equirecon.__file__).parent

#: What each part of the package may import of the package besides itself; lowest first.
ALLOWED = {
    "imaging": set(),
    "modeling": set(),
    "argument_checks": set(),
    "run_directory": {"argument_checks"},
    "reporting": set(),
    "publishing": set(),
    "process_group": set(),
    "host_memory": set(),
    "model_card": {"reporting"},
    "registration": {"modeling"},
    "__init__": {"modeling", "registration"},
    "training": {
        "imaging",
        "modeling",
        "argument_checks",
        "run_directory",
        "model_card",
        "reporting",
        "publishing",
        "process_group",
    },
    "evaluation": {"imaging", "modeling", "registration"},
    "finetuning": {
        "imaging",
        "modeling",
        "registration",
        "evaluation",
        "argument_checks",
        "run_directory",
        "model_card",
        "publishing",
        "process_group",
    },
    "commands": {
        "__init__",
        "imaging",
        "modeling",
        "training",
        "evaluation",
        "finetuning",
        "argument_checks",
        "run_directory",
        "registration",
        "model_card",
        "reporting",
        "host_memory",
    },
    "__main__": {"commands"},
}


def _part(module: str) -> str:
    """`equirecon.training.trainer` → "training"; `equirecon` → "__init__"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_module(name: str) -> bool:
    path = PACKAGE.joinpath(*name.split(".")[1:])
    return path.is_dir() or path.with_suffix(".py").is_file()


def _imports(path: Path) -> set[str]:
    """The `equirecon...` modules that the file at `path` imports, relative imports resolved."""
    module = ".".join(("equirecon", *path.relative_to(PACKAGE).with_suffix("").parts))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # `from .. import x`: x may be a module
                    found |= {f"{target}.{alias.name}" for alias in node.names if _is_module(f"{target}.{alias.name}")}
                found.add(target)
            elif node.module:
                found.add(node.module)
    return {name for name in found if name == "equirecon" or name.startswith("equirecon.")}


def _violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(("equirecon", *path.relative_to(PACKAGE).with_suffix("").parts))
        if module.endswith(".__init__"):
            module = module[: -len(".__init__")]
        source = _part(module)
        assert source in ALLOWED, f"{path} is in no layer of docs/architecture.md; add it there and here"
        for target in _imports(path):
            target_part = _part(target)
            if target_part == "__init__" and target != "equirecon":
                continue
            if target_part != source and target_part not in ALLOWED[source]:
                problems.append(f"{module} imports {target}")
    return problems


def test_imports_point_down_the_layers():
    assert _violations() == []


def test_modeling_and_imaging_import_nothing_of_the_package_outside_themselves():
    for part in ("modeling", "imaging"):
        for path in (PACKAGE / part).rglob("*.py"):
            outside = {name for name in _imports(path) if _part(name) != part}
            assert not outside, f"{path.relative_to(PACKAGE)} imports {sorted(outside)}"


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    # A lower package importing a higher one must fail: plant one and look.
    planted = PACKAGE / "imaging" / "_planted_upward_import.py"
    planted.write_text("from ..training import trainer\n")
    try:
        assert "equirecon.imaging._planted_upward_import imports equirecon.training" in _violations()
    finally:
        planted.unlink()
