"""The packages' layering: sdekit never imports diffusion, and diffusion uses sdekit's public API only."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path):
    """``(line, module, names)`` for every import statement of a file (``names`` empty for ``import module``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, tuple(alias.name for alias in node.names)


def _private_sdekit_use(module: str, names: tuple) -> str | None:
    parts = module.split(".")
    if parts[0] != "sdekit":
        return None
    if any(part.startswith("_") for part in parts[1:]) or parts[1:2] == ["backends"]:
        return module
    if module == "sdekit" and any(name.startswith("_") or name == "backends" for name in names):
        return f"{module}: {', '.join(names)}"
    private = [name for name in names if name.startswith("_")]
    return f"{module}: {', '.join(private)}" if private else None


def test_sdekit_does_not_import_diffusion():
    hits = [f"{path.relative_to(ROOT)}:{line} imports {module}" for path in sorted((ROOT / "sdekit").rglob("*.py"))
            for line, module, _ in _imports(path) if module.split(".")[0] == "diffusion"]
    assert hits == []


def _private_attributes(path: Path):
    """``(line, "sdekit.x")`` for every attribute ``sdekit._x`` or ``sdekit.backends`` read in a file."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sdekit"
                and (node.attr.startswith("_") or node.attr == "backends")):
            yield node.lineno, f"sdekit.{node.attr}"


def test_diffusion_uses_public_sdekit_names_only():
    files = sorted((ROOT / "diffusion").rglob("*.py"))
    hits = [f"{path.relative_to(ROOT)}:{line} uses {use}" for path in files
            for line, module, names in _imports(path) if (use := _private_sdekit_use(module, names))]
    hits += [f"{path.relative_to(ROOT)}:{line} uses {use}" for path in files for line, use in _private_attributes(path)]
    assert hits == []


def test_the_scan_sees_private_uses():
    """The rule above is not vacuous: each kind of private use is caught, a public one is not."""
    assert _private_sdekit_use("sdekit.problem", ("_normalise_params",))
    assert _private_sdekit_use("sdekit._rng", ("mix64",))
    assert _private_sdekit_use("sdekit.backends.numba_backend", ())
    assert _private_sdekit_use("sdekit", ("backends",))
    assert _private_sdekit_use("sdekit.params", ("extend",)) is None
    assert _private_sdekit_use("numpy", ("_x",)) is None


def test_diffusion_adds_its_demo_section_through_the_entry_point():
    """``sdekit demo`` reaches diffusion through the entry-point group ``sdekit.demo`` (pyproject), not an import."""
    from diffusion.demo import sdekit_demo_section
    from sdekit.cli import demo_sections

    assert [point.load() for point in demo_sections() if point.name == "diffusion"] == [sdekit_demo_section]
