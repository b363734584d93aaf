"""The environments tests build from the installed distributions (environments.py) hold their requirements'
closure, as pip would install it, and nothing else: not the project, not the project environment's other
distributions."""

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from environments import ClosureError, environment_for, environment_with, requirement_closure
from packaging.utils import canonicalize_name

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def environments_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("environments")


def run_python(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -c code` as a deployment runs it: a clean environment (PATH only, no PYTHONPATH), elsewhere."""
    return subprocess.run([str(python), "-c", code], env={"PATH": os.environ["PATH"]}, cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def names(distributions) -> set[str]:
    return {canonicalize_name(dist.metadata["Name"]) for dist in distributions}


def pinned(name: str) -> str:
    return f"{name}=={metadata.version(name)}"


def test_numpy_environment_holds_numpy_alone(environments_root, tmp_path):
    python = environment_for([pinned("numpy")], environments_root)
    assert python.parent.parent.joinpath("pyvenv.cfg").is_file()

    done = run_python(python, "import numpy; print(numpy.__version__, numpy.arange(4).sum())", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [metadata.version("numpy"), "6"]  # its compiled core loads (numpy.libs)

    # The project environment, run the same way, has them: their absence below is the environment's doing.
    assert run_python(Path(sys.executable), "import tqdm, imgpipe", tmp_path).returncode == 0
    for module in ("tqdm", "imgpipe"):  # imgpipe: installed editable, through a .pth file
        done = run_python(python, f"import {module}", tmp_path)
        assert done.returncode != 0 and f"ModuleNotFoundError: No module named '{module}'" in done.stderr, done.stderr

    # Nothing of the project environment on its path; its distributions are numpy's alone.
    done = run_python(python, "import sys, json, importlib.metadata as md; "
                              "print(json.dumps([sys.prefix, sys.path, [d.metadata['Name'] for d in md.distributions()]]))",
                      tmp_path)
    prefix, path, installed = json.loads(done.stdout)
    assert Path(prefix) == python.parent.parent
    leaks = [entry for entry in path if entry.startswith((str(PROJECT), sys.prefix)) or
             ("site-packages" in entry and not entry.startswith(prefix))]
    assert not leaks, path
    assert installed == ["numpy"]


def test_pandas_closure_follows_declared_dependencies_not_extras():
    closure = names(requirement_closure(["pandas"]))
    assert {"pandas", "numpy", "python-dateutil", "six"} == closure  # six: python-dateutil's
    # Installed here (mlflow's, the tests'), but pandas asks for them only with extras; tzdata: Windows only.
    extras_only = {"pyarrow", "pytest", "scipy", "matplotlib", "jinja2", "sqlalchemy", "fsspec"}
    assert extras_only <= {canonicalize_name(dist.metadata["Name"]) for dist in metadata.distributions()}
    assert not closure & extras_only

    assert "pyarrow" in names(requirement_closure(["pandas[pyarrow]"]))
    assert "pyarrow" in names(requirement_closure(["pandas[parquet]"]))  # parquet asks for pandas[pyarrow]
    assert "pytest" not in names(requirement_closure(["pandas[parquet]"]))


def test_unsatisfied_version_is_an_error():
    with pytest.raises(ClosureError, match=r"numpy .* is installed, but the requirements require numpy==0\.0\.1"):
        requirement_closure(["numpy==0.0.1"])
    with pytest.raises(ClosureError, match="no-such-distribution is not installed"):
        requirement_closure(["no-such-distribution"])


def fake_distribution(site: Path, name: str, requires: list[str]) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("\n".join(["Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0",
                                              *(f"Requires-Dist: {line}" for line in requires)]) + "\n")
    (site / f"{name}.py").write_text("")
    (info / "RECORD").write_text(f"{name}.py,,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")


def test_missing_dependency_is_an_error_where_its_marker_applies(tmp_path):
    site = tmp_path / "site-packages"
    fake_distribution(site, "demo", ['absent; python_version < "3"', 'absent; sys_platform == "no-such-platform"',
                                     'absent; extra == "more"', 'helper; extra == "some"'])
    fake_distribution(site, "helper", ['absent; python_version >= "3"'])
    fake_distribution(site, "other", [])
    assert names(requirement_closure(["demo"], site_packages=[site])) == {"demo"}
    for requirement in ("demo[more]", "demo[some]"):  # directly, or through helper, which demo[some] needs
        with pytest.raises(ClosureError, match="absent is not installed"):
            requirement_closure([requirement], site_packages=[site])

    python = environment_with(["demo", "other"], tmp_path / "environment", site_packages=[site])
    assert run_python(python, "import demo, other", tmp_path).returncode == 0
    assert run_python(python, "import helper", tmp_path).returncode != 0


def test_shared_folders_hold_only_the_closures_files(environments_root, tmp_path):
    # nvidia/cu13/lib holds the libraries of a dozen nvidia-* distributions: nvidia-cublas (and nvidia-cuda-nvrtc,
    # which it requires) link theirs into real folders, not the whole of it.
    python = environment_for(["nvidia-cublas"], environments_root)
    site = next(python.parent.parent.glob("lib/python*/site-packages"))
    for folder in ("nvidia", "nvidia/cu13", "nvidia/cu13/lib"):
        assert (site / folder).is_dir() and not (site / folder).is_symlink(), folder
    libraries = sorted(entry.name for entry in (site / "nvidia/cu13/lib").iterdir())
    assert libraries == ["libcublas.so.13", "libcublasLt.so.13", "libnvblas.so.13", "libnvrtc-builtins.alt.so.13.0",
                         "libnvrtc-builtins.so.13.0", "libnvrtc.alt.so.13", "libnvrtc.so.13"]
    assert all((site / "nvidia/cu13/lib" / name).is_symlink() for name in libraries)

    # google/ is protobuf's and google-auth's (a namespace package).
    python = environment_for(["protobuf"], environments_root)
    done = run_python(python, "import google.protobuf; from google.protobuf import descriptor_pb2; import google.auth",
                      tmp_path)
    assert "ModuleNotFoundError: No module named 'google.auth'" in done.stderr, done.stderr


def test_torch_closure_holds_its_libraries_not_its_extras():
    """torch's own closure (tests/test_logged_model.py runs a model in an environment holding it)."""
    requires = metadata.requires("torch") or []
    closure = names(requirement_closure([pinned("torch")]))
    if any(line.startswith("nvidia-") and 'platform_system == "Linux"' in line for line in requires) and \
            sys.platform == "linux":  # a CUDA build: its libraries are distributions of their own
        assert {"nvidia-cudnn-cu13", "nvidia-cublas", "cuda-toolkit", "triton"} <= closure
    assert not {"optree", "opt-einsum", "pyyaml", "numpy"} & closure  # extras only; numpy: not declared at all
