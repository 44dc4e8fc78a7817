"""One LSTM layer, forward + backward in bf16 on a CPU: oneDNN's (under autocast) against an LSTM of our own.

    python scripts/bench_lstm.py [--hidden 1024 1040] [--shapes 400x32 992x12 64x20] [--own eager compiled]

For each hidden size and batch x steps it prints the best of `--repeats` timings, the GFLOP/s (forward +
backward = 3 x the forward's matmul FLOPs) and the cosine of each gradient (inputs, h0, c0, weights, bias) to
an fp64 LSTM's. The LSTM of our own (`OwnLSTM`) is the prototype docs/performance.md describes: the input
projection of all steps as one bf16 GEMM, the recurrent GEMMs in bf16, the cell's elementwise work in fp32 kept
for a backward that makes the gate gradients step by step and the weight and input gradients as GEMMs over all
steps; `compiled` fuses each step's elementwise work with torch.compile. The package trains with oneDNN's.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BF16 = torch.bfloat16


def cell_forward(pre: Tensor, c: Tensor) -> tuple[Tensor, ...]:
    """One step's elementwise work: gate pre-activations [N, 4H] (bf16) and c [N, H] -> h (bf16), the new c, and
    what the backward needs: dc/dh through tanh(c) (A), the gate factors (K [N, 4H]) and the forget gate."""
    size = c.shape[1]
    p = pre.float()
    i, f = p[:, :size].sigmoid(), p[:, size : 2 * size].sigmoid()
    g, o = p[:, 2 * size : 3 * size].tanh(), p[:, 3 * size :].sigmoid()
    c_new = f * c + i * g
    tc = c_new.tanh()
    factors = torch.cat([g * i * (1 - i), c * f * (1 - f), i * (1 - g * g), tc * o * (1 - o)], 1)
    return (o * tc).to(BF16), c_new, o * (1 - tc * tc), factors, f


def cell_backward(dy: Tensor, dh_next: Tensor, dc: Tensor, a: Tensor, factors: Tensor, f: Tensor):
    """One step of the backward: -> the gate gradients [N, 4H] (bf16) and dc for the step before."""
    dh = dy.float() + dh_next.float()
    dc = dc + dh * a
    return (factors * torch.cat([dc, dc, dc, dh], 1)).to(BF16), dc * f


class OwnLSTM(torch.autograd.Function):
    """One time-major LSTM layer: x [T, N, E], h0 and c0 [N, H], PyTorch's weight layout (gates i, f, g, o)."""

    cells = (cell_forward, cell_backward)

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, bias):
        steps, rows, width = x.shape
        forward_cell = OwnLSTM.cells[0]
        xw = torch.addmm(bias.to(BF16), x.reshape(-1, width).to(BF16), w_ih.to(BF16).t()).view(steps, rows, -1)
        hs = torch.empty(steps + 1, rows, w_hh.shape[1], dtype=BF16)
        hs[0] = h0
        w_hh_t, c, saved = w_hh.to(BF16).t(), c0.float(), []
        for t in range(steps):
            hs[t + 1], c, *kept = forward_cell(torch.addmm(xw[t], hs[t], w_hh_t), c)
            saved.append(kept)
        ctx.save_for_backward(x, w_ih, w_hh, hs)
        ctx.saved = saved
        return hs[1:], c

    @staticmethod
    def backward(ctx, dy, dc_last):
        x, w_ih, w_hh, hs = ctx.saved_tensors
        steps, rows, width = x.shape
        backward_cell = OwnLSTM.cells[1]
        w_hh_n = w_hh.t().contiguous().to(BF16).t()  # [4H, H] read in the orientation the GEMM runs fastest
        gates = torch.empty(steps, rows, 4 * w_hh.shape[1], dtype=BF16)
        dh = torch.zeros(rows, w_hh.shape[1])
        dc = dc_last.float() if dc_last is not None else torch.zeros_like(dh)
        for t in range(steps - 1, -1, -1):
            gates[t], dc = backward_cell(dy[t], dh, dc, *ctx.saved[t])
            dh = gates[t] @ w_hh_n
        flat = gates.view(steps * rows, -1)
        dx = (flat @ w_ih.t().contiguous().to(BF16).t()).view(steps, rows, width).to(x.dtype)
        dw_ih = (x.reshape(-1, width).to(BF16).t().contiguous() @ flat).t().float()
        dw_hh = (hs[:-1].reshape(steps * rows, -1).t().contiguous() @ flat).t().float()
        return dx, dh.float(), dc, dw_ih, dw_hh, flat.sum(0, dtype=torch.float32)


def run_lstm(kind: str, lstm: nn.LSTM, x: Tensor, h0: Tensor, c0: Tensor) -> Tensor:
    if kind == "onednn":
        with torch.autocast("cpu", dtype=BF16):
            return lstm(x, (h0, c0))[0]
    bias = lstm.bias_ih_l0 + lstm.bias_hh_l0
    return OwnLSTM.apply(x, h0[0], c0[0], lstm.weight_ih_l0, lstm.weight_hh_l0, bias)[0]


def bench(kind: str, hidden: int, rows: int, steps: int, inputs: int, repeats: int) -> dict:
    torch.manual_seed(0)
    lstm = nn.LSTM(inputs, hidden)
    x = torch.randn(steps, rows, inputs, requires_grad=True)
    h0, c0 = (torch.randn(1, rows, hidden, requires_grad=True) for _ in range(2))
    grad_y = torch.randn(steps, rows, hidden)
    exact = nn.LSTM(inputs, hidden).double()
    exact.load_state_dict({k: v.double() for k, v in lstm.state_dict().items()})
    x64, h64, c64 = (t.detach().double().requires_grad_() for t in (x, h0, c0))
    exact(x64, (h64, c64))[0].backward(grad_y.double())
    best = float("inf")
    for _ in range(repeats):
        for tensor in (x, h0, c0, *lstm.parameters()):
            tensor.grad = None
        start = time.perf_counter()
        run_lstm(kind, lstm, x, h0, c0).float().backward(grad_y)
        best = min(best, time.perf_counter() - start)
    pairs = {"x": (x, x64), "h0": (h0, h64), "c0": (c0, c64), "w_ih": (lstm.weight_ih_l0, exact.weight_ih_l0),
             "w_hh": (lstm.weight_hh_l0, exact.weight_hh_l0), "b": (lstm.bias_ih_l0, exact.bias_ih_l0)}  # fmt: skip
    cosines = {
        k: F.cosine_similarity(a.grad.flatten().double(), b.grad.flatten(), 0).item() for k, (a, b) in pairs.items()
    }
    flops = 3 * 2 * 4 * hidden * (inputs + hidden) * rows * steps
    return {"kind": kind, "hidden": hidden, "rows": rows, "steps": steps, "ms": best * 1e3,
            "gflops": flops / best / 1e9, "cosine": cosines}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[1024, 1040])
    parser.add_argument("--inputs", type=int, default=544, help="input width (the large VAE's decoder: 512 + z 32)")
    parser.add_argument("--shapes", nargs="+", default=["400x32", "992x12", "64x20"], help="rows x steps")
    parser.add_argument("--own", nargs="*", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--skip-onednn", action="store_true", help="only our own (a CPU without oneDNN's bf16 LSTM)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for shape in args.shapes:
        rows, steps = (int(part) for part in shape.split("x"))
        for hidden in args.hidden:
            for kind in [*(() if args.skip_onednn else ("onednn",)), *args.own]:
                if kind == "compiled":
                    OwnLSTM.cells = tuple(torch.compile(cell, dynamic=True) for cell in (cell_forward, cell_backward))
                elif kind == "eager":
                    OwnLSTM.cells = (cell_forward, cell_backward)
                result = bench(kind, hidden, rows, steps, args.inputs, args.repeats)
                cosines = " ".join(f"{k} {v:.4f}" for k, v in result["cosine"].items())
                print(f"{kind:8s} H {hidden} {rows} x {steps}: {result['ms']:.0f} ms, {result['gflops']:.0f} GFLOP/s;"
                      f" gradient cosine to fp64: {cosines}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
