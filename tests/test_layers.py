"""The families do not import each other (DESIGN.md, issue 21): `textvae` names `image_baselines` in one
dispatcher module only, and `image_baselines` uses `textvae.core`, `textvae.config` and `textvae.errors` only.
Read from the source with ast, so that a lazy import inside a function counts too."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DISPATCHER = "textvae/dispatch.py"  # the one module of textvae that may name image_baselines (issue 21, item 2)
IMAGE_MAY_USE = ("textvae.core", "textvae.config", "textvae.errors")
ALLOWED: set[tuple[str, str]] = set()  # none: the dispatcher and the core carry every crossing (issue 21)


def imports(path: Path, root: Path = ROOT) -> set[str]:
    """Every module `path` imports, absolute, at any depth (`from textvae import config` imports textvae.config)."""
    package = path.relative_to(root).parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parent = package[: len(package) - node.level + 1] if node.level else ()
            base = ".".join(filter(None, [*parent, node.module or ""]))
            if "." in base:
                found.add(base)
            else:  # from a package: the names may be its modules
                found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def violations(root: Path = ROOT) -> set[tuple[str, str]]:
    """(file, module) for each import across the families."""
    found = set()
    for path in sorted([*root.glob("textvae/**/*.py"), *root.glob("image_baselines/**/*.py")]):
        name = path.relative_to(root).as_posix()
        for module in imports(path, root):
            if name.startswith("textvae/") and _within(module, ("image_baselines",)) and name != DISPATCHER:
                found.add((name, module))
            if name.startswith("image_baselines/") and _within(module, ("textvae",)):
                if not _within(module, IMAGE_MAY_USE):
                    found.add((name, module))
    return found


def test_the_families_import_each_other_only_through_the_dispatcher_and_the_core():
    new = violations() - ALLOWED
    assert not new, f"imports across the families (DESIGN.md, issue 21): {sorted(new)}"


def test_the_import_reader_sees_lazy_relative_and_package_imports(tmp_path):
    for package in ("textvae", "image_baselines"):
        (tmp_path / package).mkdir()
    wiring, image = tmp_path / "textvae" / "wiring.py", tmp_path / "image_baselines" / "run.py"
    wiring.write_text("def f():\n    from image_baselines.run import x\n    from .config import y\n")
    (tmp_path / "textvae" / "dispatch.py").write_text("import image_baselines.run\n")
    image.write_text("from textvae import config, pipeline\nfrom textvae.core import a\n")
    assert imports(wiring, tmp_path) == {"image_baselines.run", "textvae.config"}
    assert violations(tmp_path) == {("textvae/wiring.py", "image_baselines.run"),
                                    ("image_baselines/run.py", "textvae.pipeline")}  # fmt: skip
