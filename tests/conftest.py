"""Shared fixtures: a tiny synthetic CIFAR-like mirror and a params file pointing at it.

The synthetic classes differ in colour and in a stripe pattern, so that tiny nets learn them in a
few epochs and attacks have something real to work against.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from notbugs.data import CLASSES
from notbugs.layers import Backbone, conv_bn, global_avg_pool
from notbugs.models import Classifier

ROOT = Path(__file__).resolve().parents[1]
SHARED_MIRROR = ROOT.parent / "shared" / "datasets" / "cifar10"


def copy_working_tree(dest: Path) -> Path:
    """The repository's tracked and untracked-but-not-ignored files, copied to `dest` (no data, no venv)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


def bench_script(name: str, monkeypatch: pytest.MonkeyPatch):
    """bench/<name>.py as a module (bench/ holds scripts, not a package)."""
    return repo_script(f"bench/{name}.py", monkeypatch)


def repo_script(path: str, monkeypatch: pytest.MonkeyPatch):
    """The repository's script at `path` (e.g. "scripts/check_official_order.py") as a module. Registered in
    sys.modules while the test runs, where a dataclass defined in the script looks its module up."""
    spec = importlib.util.spec_from_file_location(Path(path).with_suffix("").as_posix().replace("/", "_"), ROOT / path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


class CompiledStandIn(torch.nn.Module):
    """What torch.compile returns, without compiling: a wrapper that shares the module's tensors under
    `_orig_mod.*` names (the naming of torch._dynamo's OptimizedModule) and computes what it computes."""

    def __init__(self, inner):
        super().__init__()
        self._orig_mod = inner

    def forward(self, x):
        return self._orig_mod(x)


class Recorder:
    """Stands in for an attack: records the arguments of every call by name (as the real function would bind
    them, defaults included) and returns `answer(arguments)` without attacking."""

    def __init__(self, real, answer):
        self.signature, self.answer, self.calls = inspect.signature(real), answer, []

    def __call__(self, *args, **kwargs):
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        self.calls.append(dict(bound.arguments))
        return self.answer(bound.arguments)


class SmallBackbone(Backbone):
    """One conv-BatchNorm-ReLU block: a real compile (forward and backward) in seconds on a small
    CPU, for tests whose claim does not depend on the network's size."""

    def __init__(self):
        super().__init__()
        self.body, self.out_dim = conv_bn(3, 8), 8

    def forward(self, x):
        return global_avg_pool(self.body(x))


def small_model() -> Classifier:
    torch.manual_seed(0)
    return Classifier(SmallBackbone(), 10, "small", 1.0).eval()


def synthetic_image(label: int, rng: np.random.Generator) -> np.ndarray:
    hue = np.array([(label * 37) % 256, (label * 91 + 50) % 256, (label * 53 + 120) % 256], dtype=np.float64)
    img = np.tile(hue, (32, 32, 1)) * 0.6
    period = 2 + label % 5
    stripes = (np.arange(32) // period) % 2
    img[:, :, label % 3] += 80 * (stripes[None, :] if label < 5 else stripes[:, None])
    img += rng.normal(0, 20, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def png_bytes(array: np.ndarray, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def make_mirror(root: Path, train_per_class: int = 20, test_per_class: int = 10, seed: int = 0,
                as_tar: bool = False) -> Path:
    """Write an ImageFolder tree (or tar.gz parts) of synthetic 32x32 images."""
    rng = np.random.default_rng(seed)
    files = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for c, name in enumerate(CLASSES):
            for i in range(per_class):
                files[f"{split}/{name}/{split}_{c}_{i:05d}.png"] = png_bytes(synthetic_image(c, rng))
    root.mkdir(parents=True, exist_ok=True)
    if as_tar:
        for part, split in enumerate(("train", "test")):
            with tarfile.open(root / f"part-{part}.tar.gz", "w:gz") as tar:
                for rel, data in files.items():
                    if rel.startswith(split):
                        info = tarfile.TarInfo(rel)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
    else:
        for rel, data in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
    return root


def write_params(path: Path, mirror: Path, train_per_class=20, test_per_class=10,
                 profile: str = "tiny", edit=None) -> Path:
    """A copy of the project's params.yaml, pointed at `mirror`, optionally edited by `edit(doc)`."""
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    doc["profile"] = profile
    doc["data"].update(source="mirror", mirror=str(mirror), train_per_class=train_per_class,
                       test_per_class=test_per_class)
    if edit:
        edit(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def mirror(tmp_path_factory) -> Path:
    return make_mirror(tmp_path_factory.mktemp("mirror"))


@pytest.fixture
def params_file(tmp_path, mirror) -> Path:
    return write_params(tmp_path / "params.yaml", mirror)


# The variables that point the library at other parameters or data (config.load_params): the tests choose their
# own, whatever the shell that runs them exports
USER_SETTINGS = ("NOTBUGS_PROFILE", "NOTBUGS_DATA_SOURCE", "NOTBUGS_MIRROR")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    # a stage that compiles points TORCHINDUCTOR_CACHE_DIR at its data folder for the rest of the process
    # (notbugs.compiling.keep_compiled_kernels); each test starts without it. USER_SETTINGS are gone for the
    # session (pytest_configure), and a test that sets one does so through monkeypatch, which undoes it
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)


def pytest_configure(config):
    """The user's settings are dropped for the whole session: module-scoped fixtures, which load parameters
    before any function-scoped fixture runs, would read them. Under pytest-xdist (scripts/test.sh runs a worker
    per core), one thread per worker and per process it starts: on CI's 2 cores, two workers of two threads
    each would oversubscribe them."""
    for var in USER_SETTINGS:
        os.environ.pop(var, None)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def can_compile_here() -> bool:
    """Inductor compiles on a CPU with a C++ compiler (CI's machine and ours have one)."""
    return any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++"))


def require_compiled(reason: str | None) -> None:
    """For the tests that compile for real: a fallback to eager fails them where a C++ compiler exists (a
    probe that rejected every compile would otherwise leave them passing on the eager model), and skips
    them, saying why, where none does."""
    if reason is None:
        return
    if can_compile_here():
        pytest.fail(f"torch.compile fell back to eager on a machine with a C++ compiler: {reason}")
    pytest.skip(f"torch.compile cannot work here (no C++ compiler): {reason}")


def dead_pid() -> int:
    """The pid of a process that has ended (a child that printed its pid and exited): a killed writer's."""
    out = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                         check=True)
    return int(out.stdout)
