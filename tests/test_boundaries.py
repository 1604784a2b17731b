"""Import boundaries between genbench's layers, checked statically with `ast` (nothing from genbench is imported).

Every ``.py`` under ``src/genbench`` is parsed and each import is collected: ``import x`` and ``from x import y``,
at module level or inside functions, classes and ``if TYPE_CHECKING:`` blocks, with relative imports resolved.
``from pkg import name`` counts as importing ``pkg.name`` when that is a module of the tree, else ``pkg``.
The rules below say which layer may not import which; the checks are on direct imports (a module's own import
statements), so the rules for ``genbench.run.record`` & co. exist to keep what the leaderboard reads torch-free.

Known violations of today are listed in ``KNOWN_VIOLATIONS``: the test fails on any new one, and also when a listed
one has gone (so the list cannot rot).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = SRC / "genbench"

LIGHTNING = ("pytorch_lightning", "lightning", "lightning_fabric")
# Anything that loads torch: the leaderboard and the files it reads must work without it.
TORCH = ("torch", "torchvision", "torch_fidelity", *LIGHTNING)


@dataclass(frozen=True)
class Import:
    path: str  # relative to the repository root
    line: int
    importer: str  # dotted module name of the file
    imported: str  # dotted module name it imports

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.imported}"


@dataclass(frozen=True)
class Rule:
    name: str
    subjects: tuple[str, ...]  # the rule applies to modules under these prefixes
    forbidden: tuple[str, ...] = ()  # ... which may not import modules under these prefixes
    exempt: frozenset[str] = frozenset()  # importers the rule does not apply to
    # An extra test beyond `forbidden`: (importer, imported) -> violation.
    predicate: Callable[[str, str], bool] | None = None

    def applies_to(self, module: str) -> bool:
        return module not in self.exempt and any(under(module, p) for p in self.subjects)

    def violated_by(self, imp: Import) -> bool:
        if not self.applies_to(imp.importer):
            return False
        if any(under(imp.imported, p) for p in self.forbidden):
            return True
        return self.predicate is not None and self.predicate(imp.importer, imp.imported)


def under(module: str, prefix: str) -> bool:
    """`module` is `prefix` or inside it (``torch.nn`` is under ``torch``; ``torchvision`` is not)."""
    return module == prefix or module.startswith(prefix + ".")


def _other_model(importer: str, imported: str) -> bool:
    """A model module (``genbench.models.<x>...``) importing a different one (``genbench.models.<y>...``)."""
    own = importer.split(".")
    other = imported.split(".")
    return len(own) >= 3 and len(other) >= 3 and other[:2] == ["genbench", "models"] and other[2] != own[2]


# Modules allowed to import genbench.train: the entry points that compose a run. (Tests import it too; they are
# not scanned.) The leaderboard, bench and evaluate build on genbench.run / the contract instead.
TRAIN_IMPORTERS = frozenset({"genbench.__main__", "genbench.run.worker", "genbench.train"})

RULES: tuple[Rule, ...] = (
    Rule(
        "metrics and nets are plain torch: no Lightning, no higher layer",
        subjects=("genbench.metrics", "genbench.nets"),
        forbidden=(
            *LIGHTNING,
            "genbench.models",
            "genbench.callbacks",
            "genbench.evaluators",
            "genbench.run",
            "genbench.train",
            "genbench.leaderboard",
            "genbench.bench",
        ),
    ),
    Rule(
        "callbacks and evaluators see only the contract (genbench.interface), not concrete models",
        subjects=("genbench.callbacks", "genbench.evaluators"),
        forbidden=("genbench.models", "genbench.train", "genbench.bench"),
    ),
    Rule(
        "data knows nothing of models, callbacks, evaluators or training",
        subjects=("genbench.data",),
        forbidden=("genbench.models", "genbench.callbacks", "genbench.evaluators", "genbench.train"),
    ),
    Rule(
        "models import no callbacks, evaluators, training, leaderboard, bench or run",
        subjects=("genbench.models",),
        forbidden=(
            "genbench.callbacks",
            "genbench.evaluators",
            "genbench.train",
            "genbench.leaderboard",
            "genbench.bench",
            "genbench.run",
        ),
    ),
    Rule(
        "no model module imports another model module",
        subjects=("genbench.models",),
        exempt=frozenset({"genbench.models"}),  # the package __init__ is not a model
        predicate=_other_model,
    ),
    Rule(
        "the leaderboard reads files: no torch, Lightning, models, callbacks, evaluators, training or run internals",
        subjects=("genbench.leaderboard",),
        forbidden=(
            *TORCH,
            "genbench.models",
            "genbench.callbacks",
            "genbench.evaluators",
            "genbench.train",
            "genbench.run.callbacks",
            "genbench.run.launcher",
            "genbench.run.checkpoints",
        ),
    ),
    Rule(
        "what the leaderboard reads (run.record, run.paths, run.provenance, errors) imports no torch or Lightning",
        subjects=(
            "genbench.run.record",
            "genbench.run.paths",
            "genbench.run.provenance",
            "genbench.errors",
            "genbench.run.errors",
        ),
        forbidden=TORCH,
    ),
    Rule(
        "the results renderer and the Pillow drawing it shares read files and draw: no torch, Lightning, models, "
        "callbacks, evaluators or training",
        subjects=("genbench.results", "genbench.drawing", "genbench.panels"),
        forbidden=(*TORCH, "genbench.models", "genbench.callbacks", "genbench.evaluators", "genbench.train"),
    ),
    Rule(
        "bench does not import train (git_commit lives in genbench.run.provenance)",
        subjects=("genbench.bench",),
        forbidden=("genbench.train",),
    ),
    Rule(
        f"only {sorted(TRAIN_IMPORTERS - {'genbench.train'})} import genbench.train",
        subjects=("genbench",),
        forbidden=("genbench.train",),
        exempt=TRAIN_IMPORTERS,
    ),
)

# (importer module, imported module) -> why it is tolerated for now. Keyed without line numbers so edits elsewhere
# in the file do not churn the list.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}


# --------------------------------------------------------------------------------------------------- the scanner


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_in_source(
    source: str, module: str, *, is_package: bool, known_modules: Iterable[str] = (), path: str = "<string>"
) -> list[Import]:
    """Every import in `source` (the code of `module`), anywhere in the tree, relative ones resolved."""
    known = set(known_modules)
    tree = ast.parse(source, filename=path)
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(path, node.lineno, module, alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                if node.level - 1 > len(package) - 1:
                    raise ValueError(f"{path}:{node.lineno}: relative import beyond the top-level package")
                base_parts = package[: len(package) - (node.level - 1)]
                if node.module:
                    base_parts = [*base_parts, *node.module.split(".")]
                base = ".".join(base_parts)
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                imported = candidate if alias.name != "*" and candidate in known else base
                found.append(Import(path, node.lineno, module, imported))
    return sorted(set(found), key=lambda i: (i.line, i.imported))  # `from m import a, b`: one import of m


def scan(package: Path = PACKAGE) -> tuple[set[str], list[Import]]:
    files = sorted(package.rglob("*.py"))
    modules = {module_name(f, package.parent): f for f in files}
    found: list[Import] = []
    for name, file in modules.items():
        found += imports_in_source(
            file.read_text(encoding="utf-8"),
            name,
            is_package=file.name == "__init__.py",
            known_modules=modules,
            path=str(file.relative_to(REPO)) if file.is_relative_to(REPO) else str(file),
        )
    return set(modules), found


def violations(found: Iterable[Import], rules: Iterable[Rule] = RULES) -> list[tuple[Rule, Import]]:
    return [(rule, imp) for rule in rules for imp in found if rule.violated_by(imp)]


def _report(pairs: Iterable[tuple[Rule, Import]]) -> str:
    by_rule: dict[str, list[str]] = {}
    for rule, imp in pairs:
        by_rule.setdefault(rule.name, []).append(str(imp))
    return "\n".join(
        f"{name}:\n" + "\n".join(f"  {line}" for line in lines) for name, lines in by_rule.items()
    )


# ------------------------------------------------------------------------------------------------------ the tests

MODULES, IMPORTS = scan()


def test_scan_sees_the_tree():
    assert len(MODULES) > 50, sorted(MODULES)
    assert {"genbench.models.glo", "genbench.leaderboard.collect", "genbench.run.record"} <= MODULES
    assert len(IMPORTS) > 200
    # Function-level imports are collected too (genbench.__main__ imports train lazily).
    assert any(i.importer == "genbench.__main__" and i.imported == "genbench.train" for i in IMPORTS)


def test_every_rule_covers_some_module():
    """A rule whose subjects were all renamed away would pass forever: fail instead, so it gets updated."""
    idle = [rule.name for rule in RULES if not any(rule.applies_to(m) for m in MODULES)]
    assert not idle, f"rules that match no module under src/genbench: {idle}"


def test_checker_reports_a_synthetic_violation():
    source = (
        "import numpy as np\n"
        "from . import frechet\n"
        "import pytorch_lightning as pl\n"
        "\n"
        "def later():\n"
        "    from ..models import glo\n"
        "    from ..models.vae import VAE\n"
        "    from genbench.train import train\n"
    )
    known = {"genbench.metrics.frechet", "genbench.models.glo", "genbench.models.vae"}
    found = imports_in_source(
        source, "genbench.metrics.fake", is_package=False, known_modules=known, path="fake.py"
    )
    assert [(i.line, i.imported) for i in found] == [
        (1, "numpy"),
        (2, "genbench.metrics.frechet"),
        (3, "pytorch_lightning"),
        (6, "genbench.models.glo"),
        (7, "genbench.models.vae"),
        (8, "genbench.train"),
    ]
    reported = {str(imp) for _, imp in violations(found)}
    assert reported == {
        "fake.py:3 imports pytorch_lightning",
        "fake.py:6 imports genbench.models.glo",
        "fake.py:7 imports genbench.models.vae",
        "fake.py:8 imports genbench.train",
    }

    # Model to model through a relative import; a package __init__ gathering its models is not a violation.
    vae = imports_in_source("from .glo import CodeTable\n", "genbench.models.vae", is_package=False)
    assert [(r.name, str(i)) for r, i in violations(vae)] == [
        ("no model module imports another model module", "<string>:1 imports genbench.models.glo")
    ]
    init = imports_in_source("from . import glo\n", "genbench.models", is_package=True, known_modules=known)
    assert [i.imported for i in init] == ["genbench.models.glo"] and not violations(init)

    # Torch in what the leaderboard reads; torch_fidelity is not "torch" by prefix but loads it.
    record = imports_in_source(
        "import torch.nn\nimport torchvision\n", "genbench.run.record", is_package=False
    )
    assert len(violations(record)) == 2
    assert not violations(
        imports_in_source("import torchaudio_like_name\n", "genbench.errors", is_package=False)
    )


def test_no_new_boundary_violations():
    new = [
        (rule, imp)
        for rule, imp in violations(IMPORTS)
        if (imp.importer, imp.imported) not in KNOWN_VIOLATIONS
    ]
    assert not new, "forbidden imports across genbench's layers:\n" + _report(new)


def test_known_violations_still_exist():
    current = {(imp.importer, imp.imported) for _, imp in violations(IMPORTS)}
    gone = sorted(set(KNOWN_VIOLATIONS) - current)
    assert not gone, f"fixed: remove these from KNOWN_VIOLATIONS in {Path(__file__).name}: {gone}"
