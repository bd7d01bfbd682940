"""The software environments stay in sync: conda YAMLs pin what the pip requirement files pin."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _reqs(name: str) -> list[str]:
    lines = (REPO / "envs" / name).read_text().splitlines()
    return [ln.split(";")[0].strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _conda_pip(name: str) -> list[str]:
    env = yaml.safe_load((REPO / "envs" / name).read_text())
    pip = [d for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, f"{name}: expected one pip section"
    return pip[0]["pip"]


def test_cpu_conda_env_matches_requirements():
    assert _conda_pip("cpu.yaml") == _reqs("requirements-cpu.txt")


def test_cuda_env_pins_spconv_cu12x():
    reqs = _reqs("requirements-cuda.txt")
    conda = _conda_pip("cuda.yaml")
    assert "spconv-cu120==2.3.6" in conda and "torch==2.13.0" in conda
    assert "spconv-cu126==2.3.8" in reqs  # the wheel that serves Python >= 3.12
    assert "newer" in (REPO / "envs/cuda.yaml").read_text() or ">= 3.12" in (REPO / "envs/cuda.yaml").read_text()
    # every CUDA conda pin is a requirement pin (the conda env is the Python 3.11 variant)
    assert set(conda) <= set(reqs)


def test_pins_are_exact_and_consistent_with_constraints():
    constraints = {ln.split("==")[0].lower(): ln for ln in _reqs("constraints-cpu.txt") if "==" in ln}
    for req in _reqs("requirements-cpu.txt"):
        name, _, version = req.partition("==")
        assert version, f"{req}: pin an exact version"
        c = constraints.get(name.lower().replace("_", "-")) or constraints.get(name.lower())
        assert c is None or c.split("==")[1].split("+")[0] == version.split("+")[0], f"{req} vs constraints {c}"


def test_torch_scatter_is_optional_and_the_cuda_env_says_where_its_wheel_is():
    """Not in the pinned environments (PyPI has its source only: a 10-20 min compile the README's commands
    cannot afford); an extra, and PyG's wheel index named where the CUDA environment is made."""
    import tomllib

    for name in ("requirements-cpu.txt", "requirements-cuda.txt", "constraints-cpu.txt", "requirements-nodeps.txt"):
        assert not [r for r in _reqs(name) if r.lower().replace("_", "-").startswith("torch-scatter")], name
    assert not [d for d in _conda_pip("cuda.yaml") + _conda_pip("cpu.yaml") if "scatter" in d]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("torch-scatter") for r in extras["scatter"])
    for name in ("cuda.yaml", "requirements-cuda.txt"):
        assert "https://data.pyg.org/whl/torch-" in (REPO / "envs" / name).read_text(), name
