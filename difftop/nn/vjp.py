"""Hand-written forward tapes and vector-Jacobian products of the small MLPs a latent objective calls.

Why: at batch 1 a solve's value+gradient evaluation of TD-MPC-sized networks is mostly per-op overhead
(autograd records a node per forward op and runs an engine over them; measured ~65% of an evaluation,
results/trajopt/README.md). The solvers' graph-free iterations need only J and dJ/da, so these
callables compute both with plain tensor ops under `no_grad`: the forward keeps what each layer's backward
reads (a "tape"), the backward calls the same aten backward kernels autograd would (`elu_backward`,
`tanh_backward`, `native_layer_norm_backward`, ...), so values agree with autograd's to rounding.

Each callable also works as an ordinary function (`f(z, a)`, autograd as usual): the implicit backward,
training losses and anything else that needs a graph use that. `latent_objective` takes the fast path
when every function it is given has `taped` and `vjp` (difftop/trajopt/objective.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

aten = torch.ops.aten

# layers whose forward and input-gradient are written out below; anything else in a network makes
# `supported()` false and the objective stays on autograd.
_SUPPORTED = (nn.Linear, nn.ELU, nn.Tanh, nn.ReLU, nn.LayerNorm, nn.Mish, nn.SiLU, nn.Sigmoid,
              nn.GELU, nn.Identity)


def supported(net: nn.Module) -> bool:
    """Whether `MLPTape` can run `net`: an nn.Sequential of the layers above (dropout is not: its mask
    would differ from the autograd path's in training mode)."""
    return isinstance(net, nn.Sequential) and all(type(m) in _SUPPORTED for m in net)


class MLPTape:
    """`taped(x) -> (y, tape)` and `vjp(tape, dy) -> dx` for an nn.Sequential of supported layers.

    Holds references to the modules, not copies of their weights: an optimizer step is seen at once."""

    def __init__(self, net: nn.Sequential):
        if not supported(net):
            kinds = sorted({type(m).__name__ for m in net if type(m) not in _SUPPORTED}) \
                if isinstance(net, nn.Sequential) else [type(net).__name__]
            raise TypeError(f"MLPTape: unsupported layers {kinds}")
        self.layers = [m for m in net if type(m) is not nn.Identity]

    def taped(self, x: Tensor) -> tuple[Tensor, list]:
        tape = []
        for m in self.layers:
            kind = type(m)
            if kind is nn.Linear:
                tape.append(None)
                x = F.linear(x, m.weight, m.bias)
            elif kind is nn.LayerNorm:
                y, mean, rstd = torch.native_layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)
                tape.append((x, mean, rstd))
                x = y
            elif kind in (nn.Tanh, nn.Sigmoid):
                x = torch.tanh(x) if kind is nn.Tanh else torch.sigmoid(x)
                tape.append(x)  # their backward reads the output
            elif kind is nn.ReLU:
                x = torch.relu(x)
                tape.append(x)
            else:
                # ELU, Mish, SiLU, GELU: the backward reads the input; the functional calls are the modules'
                # own ops, without nn.Module's call overhead
                tape.append(x)
                x = F.elu(x, m.alpha) if kind is nn.ELU else F.mish(x) if kind is nn.Mish \
                    else F.silu(x) if kind is nn.SiLU else F.gelu(x, approximate=m.approximate)
        return x, tape

    def vjp(self, tape: list, g: Tensor) -> Tensor:
        for m, t in zip(reversed(self.layers), reversed(tape)):
            kind = type(m)
            if kind is nn.Linear:
                g = g.mm(m.weight)
            elif kind is nn.ELU:
                g = aten.elu_backward(g, m.alpha, 1, 1, False, t)
            elif kind is nn.Tanh:
                g = aten.tanh_backward(g, t)
            elif kind is nn.Sigmoid:
                g = aten.sigmoid_backward(g, t)
            elif kind is nn.ReLU:
                g = aten.threshold_backward(g, t, 0)
            elif kind is nn.LayerNorm:
                x, mean, rstd = t
                g = aten.native_layer_norm_backward(g, x, m.normalized_shape, mean, rstd, m.weight, m.bias,
                                                    [True, False, False])[0]
            elif kind is nn.Mish:
                g = aten.mish_backward(g, t)
            elif kind is nn.SiLU:
                g = aten.silu_backward(g, t)
            else:  # GELU
                g = aten.gelu_backward(g, t, approximate=m.approximate)
        return g


class ConcatMLP:
    """f(z, a) = net([z, a]): TD-MPC's dynamics, reward and Q heads, with a tape and a VJP to (z, a)."""

    def __init__(self, net: nn.Sequential):
        self.net = net
        self.mlp = MLPTape(net)

    def __call__(self, z: Tensor, a: Tensor) -> Tensor:
        return self.net(torch.cat([z, a.to(z.dtype)], dim=-1))

    def taped(self, z: Tensor, a: Tensor) -> tuple[Tensor, tuple]:
        y, tape = self.mlp.taped(torch.cat([z, a.to(z.dtype)], dim=-1))
        return y, (tape, z.shape[-1], a.dtype)

    def vjp(self, tape: tuple, g: Tensor) -> tuple[Tensor, Tensor]:
        t, nz, a_dtype = tape
        gx = self.mlp.vjp(t, g)
        return gx[..., :nz], gx[..., nz:].to(a_dtype)


class TwinMin:
    """min(Q1(z, a), Q2(z, a)) as (B,), smooth (-tau logsumexp(-Q / tau)) when tau > 0: the terminal
    value of the latent objective (`difftop.trajopt.objective.smooth_min`, same formula), with a VJP."""

    def __init__(self, q1: ConcatMLP, q2: ConcatMLP, tau: float = 0.0):
        self.q1, self.q2, self.tau = q1, q2, float(tau)

    def __call__(self, z: Tensor, a: Tensor) -> Tensor:
        from difftop.trajopt.objective import smooth_min

        return smooth_min(self.q1(z, a), self.q2(z, a), tau=self.tau)

    def taped(self, z: Tensor, a: Tensor) -> tuple[Tensor, tuple]:
        q1, t1 = self.q1.taped(z, a)
        q2, t2 = self.q2.taped(z, a)
        v = torch.stack([q1.reshape(-1), q2.reshape(-1)], 0)
        if self.tau <= 0:
            out, idx = v.min(0)
            return out, (t1, t2, idx, q1.shape)
        lse = torch.logsumexp(-v / self.tau, 0)
        return -self.tau * lse, (t1, t2, (v, lse), q1.shape)

    def vjp(self, tape: tuple, g: Tensor) -> tuple[Tensor, Tensor]:
        t1, t2, aux, shape = tape
        g = g.reshape(-1)
        if self.tau <= 0:
            w1 = torch.where(aux == 0, g, 0.0)
            w2 = g - w1
        else:
            v, lse = aux
            # softmax(-v / tau) * g, in autograd's order of operations (mul by -tau, logsumexp, div, neg),
            # so that both paths round alike
            w = -((g * -self.tau) * torch.exp(-v / self.tau - lse) / self.tau)
            w1, w2 = w[0], w[1]
        gz1, ga1 = self.q1.vjp(t1, w1.reshape(shape))
        gz2, ga2 = self.q2.vjp(t2, w2.reshape(shape))
        return gz1 + gz2, ga1 + ga2


class PiValue:
    """V(z) = min(Q1, Q2)(z, tanh(pi(z))): TD-MPC's terminal value (`estimate_value`'s last term, the
    release's `terminal=pi` objective), as (B,), with a VJP to z through both Q's input and pi's action."""

    def __init__(self, pi_net: nn.Sequential, q_min: TwinMin):
        self.pi_net, self.pi, self.q_min = pi_net, MLPTape(pi_net), q_min

    def __call__(self, z: Tensor) -> Tensor:
        return self.q_min(z, torch.tanh(self.pi_net(z)))

    def taped(self, z: Tensor) -> tuple[Tensor, tuple]:
        h, tp = self.pi.taped(z)
        a = torch.tanh(h)
        v, tq = self.q_min.taped(z, a)
        return v, (tp, a, tq)

    def vjp(self, tape: tuple, g: Tensor) -> Tensor:
        tp, a, tq = tape
        gz, ga = self.q_min.vjp(tq, g)
        return gz + self.pi.vjp(tp, aten.tanh_backward(ga, a))
