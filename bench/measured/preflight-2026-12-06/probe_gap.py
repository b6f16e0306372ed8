"""Input-gradient gaps (relative l2) of the `paper` preflight ResNet-50s: eager / compiled, bf16 / fp32.

Run from the repository root after `python bench/preflight.py --profile paper` (models in .preflight/paper).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from notbugs.compiling import _input_gradient  # noqa: E402
from notbugs.train import load_model  # noqa: E402


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


for kind in ("robust", "standard"):
    model, _ = load_model(f".preflight/paper/models/{kind}")
    model.eval()
    torch.manual_seed(0)
    x = torch.rand(200, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    g32 = _input_gradient(model, x, False)
    g16 = _input_gradient(model, x, True)
    model.backbone = torch.compile(model.backbone, dynamic=False)
    c16 = _input_gradient(model, x, True)
    c32 = _input_gradient(model, x, False)
    print(kind, f"eager bf16 vs fp32 {rel(g16, g32):.3f}  compiled bf16 vs fp32 {rel(c16, g32):.3f}  "
          f"compiled bf16 vs eager bf16 {rel(c16, g16):.3f}  compiled fp32 vs fp32 {rel(c32, g32):.4f}", flush=True)
    torch._dynamo.reset()
