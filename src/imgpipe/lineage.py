"""Which of imgpipe's modules a script runs: its import closure inside the package, read from the
source with `ast` (nothing is imported, so it costs milliseconds).

Two things rest on it: dvc.yaml must list every module a stage runs among its deps (a test derives
the closure of each stage script and compares), and a training's resume key carries a hash of the
training code, so a state saved by other code is never continued.
"""

import ast
import functools
import hashlib
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent  # src/imgpipe
NAME = PACKAGE.name


def module_file(module: str) -> Path | None:
    """The source file of `imgpipe.x.y` (a module or a package's __init__.py); None outside imgpipe."""
    parts = module.split(".")
    if parts[0] != NAME:
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str | None:
    """The dotted name of a file inside the package, None for a file outside it (a stage script)."""
    try:
        relative = path.resolve().relative_to(PACKAGE.parent)
    except ValueError:
        return None
    parts = list(relative.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports anywhere (function-level imports too), with the packages above each:
    importing imgpipe.data.sources.idx runs imgpipe/__init__.py and imgpipe/sources/__init__.py first."""
    return set(_imported_modules(Path(path), Path(path).read_text(encoding="utf-8")))


@functools.cache  # by path and source: a process hashing its code again (each fold of a cross-fit) parses nothing twice
def _imported_modules(path: Path, source: str) -> frozenset[str]:
    tree = ast.parse(source, filename=str(path))
    own = _module_name(path)
    package = own if own and path.name == "__init__.py" else (own.rpartition(".")[0] if own else "")
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package this file is in, going up level - 1 times
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)  # `from imgpipe import paths`
    with_parents = set()
    for name in names:
        parts = name.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(with_parents)


def closure(script: Path) -> list[Path]:
    """The package's source files that running `script` (a stage or a module of the package) can
    execute, sorted; the script itself is included when it lies inside the package."""
    seen: set[Path] = set()
    pending = [Path(script).resolve()]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        pending += [found for name in imported_modules(path) if (found := module_file(name)) is not None]
    return sorted(p for p in seen if p.is_relative_to(PACKAGE))


def code_version(source: str | Path) -> str:
    """A short hash of the source of a module of imgpipe (by name) or of a script (by path), and of everything
    of imgpipe it imports."""
    start = module_file(source) if isinstance(source, str) else Path(source).resolve()
    digest = hashlib.blake2b(digest_size=8)
    for path in sorted({start, *closure(start)}):
        name = path.relative_to(PACKAGE).as_posix() if path.is_relative_to(PACKAGE) else path.name
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def third_party(files: list[Path]) -> set[str]:
    """The top-level modules outside the standard library and imgpipe that these files import: what an
    environment running them must install (the logged model's requirements are derived from it)."""
    names = set().union(*(imported_modules(path) for path in files)) if files else set()
    return {name for name in names if "." not in name and name != NAME and name not in sys.stdlib_module_names}
