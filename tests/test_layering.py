"""The package graph reads bottom-up: every import inside `easyalign` (lazy ones in functions
included) goes to the same layer or a lower one, and no two units import each other.

    config_keys, sharding, distributed            (foundations)
    model, losses, data, hf                        (what is trained, on what, from where)
    train, sampler                                 (the loop and the decoder)
    algorithms, config_check, config_paths         (the phases; config_check validates their
                                                    configs against the registries below,
                                                    config_paths the files they name)
    eval                                           (evaluation of trained models)
    pipeline, stages, tools, doctor (+ doctor_models), cli   (front-ends)

`KNOWN` lists the imports that still go up, each with the reason it is open (none now).
"""

import ast
import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "easyalign"
LAYERS = [
    {"config_keys", "sharding", "distributed"},
    {"model", "losses", "data", "hf"},
    {"train", "sampler"},
    {"algorithms", "config_check", "config_paths"},
    {"eval"},
    {"pipeline", "stages", "tools", "doctor", "doctor_models", "cli", "__main__", "__init__"},
]
KNOWN: set[tuple[str, str, str]] = set()  # imports that still go up, each with its reason
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str | None:
    """`easyalign.data.world` → `data`; a module outside the package → None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "easyalign" and len(parts) > 1 else None


def imports() -> set[tuple[str, str, str]]:
    """`(importing file, its unit, imported unit)` for every import of an easyalign module."""
    edges = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts)
        source = unit_of(module if rel.name != "__init__" or len(rel.parts) > 2 else
                         "easyalign.__init__")
        package = module if rel.name == "__init__" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                    + ([base] if base else []))
                names = [base] if base != "easyalign" else [f"easyalign.{a.name}"
                                                             for a in node.names]
            else:
                continue
            for name in names:
                target = unit_of(name)
                if target and target != source:
                    edges.add((str(rel), source, target))
    return edges


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert units <= set(LAYER), sorted(units - set(LAYER))


def test_imports_go_down_the_layers():
    upward = sorted(f"{file}: {source} → {target}" for file, source, target in imports()
                    if LAYER[target] > LAYER[source] and (file, source, target) not in KNOWN)
    assert not upward, "\n".join(upward)


def test_no_two_units_import_each_other():
    pairs = {(s, t) for edge in imports() if edge not in KNOWN for s, t in [edge[1:]]}
    cycles = sorted(f"{s} ⇄ {t}" for s, t in pairs if (t, s) in pairs and s < t)
    assert not cycles, cycles


def test_the_python_api_imports_without_transformers_advice_about_pytorch():
    """Without PyTorch (the demo's install), importing transformers logs "PyTorch was not
    found…"; the library needs only its tokenizers, so `import easyalign` silences that advice
    for the Python API as for the CLI — and a caller's own setting of the variable wins."""
    import subprocess
    import sys

    hide_torch = "import sys; sys.modules['torch'] = None; "
    run = lambda code, **env: subprocess.run(  # noqa: E731
        [sys.executable, "-c", hide_torch + code], capture_output=True, text=True,
        env={**{k: v for k, v in os.environ.items()
                if k != "TRANSFORMERS_NO_ADVISORY_WARNINGS"}, **env}, check=True)
    advice = "PyTorch was not found"
    assert advice in run("import transformers").stderr  # the advice this test is about
    assert advice not in run("import easyalign; easyalign.preset; import transformers").stderr
    assert advice in run("import easyalign; import transformers",
                         TRANSFORMERS_NO_ADVISORY_WARNINGS="").stderr
