"""Darknet's ``[connected]`` layer (fully connected), optionally batch-normalised.

The input ``(C, H, W, B)`` reshapes, without a copy, to an ``(inputs, B)`` matrix whose rows
follow Darknet's ``c, h, w`` flattening, and the output is ``(outputs, 1, 1, B)``, so
``y = W @ x`` with Darknet's ``(outputs, inputs)`` weight layout and nothing transposed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from plinius.nn import activations, parallel
from plinius.nn.layers import batchnorm
from plinius.nn.layers.base import Layer, ParamSpec, Shape3, out_buffer


class ConnectedLayer(Layer):
    kind = "connected"

    def __init__(
        self,
        index: int,
        in_shape: Shape3,
        dtype: np.dtype[Any],
        *,
        outputs: int,
        activation: str,
        batch_normalize: bool,
    ) -> None:
        super().__init__(index, in_shape, dtype)
        self.inputs = math.prod(in_shape)
        self.outputs = outputs
        self.activation = activation
        self.batch_normalize = batch_normalize
        self.out_shape = (outputs, 1, 1)

    def param_specs(self) -> list[ParamSpec]:
        o = self.outputs
        specs = [
            ParamSpec("biases", (o,)),
            ParamSpec("weights", (o, self.inputs), decay=True),
        ]
        if self.batch_normalize:  # Darknet writes these after the weights for connected layers
            specs += [
                ParamSpec("scales", (o,)),
                ParamSpec("rolling_mean", (o,), trainable=False),
                ParamSpec("rolling_variance", (o,), trainable=False),
            ]
        return specs

    def init_params(self, rng: np.random.Generator) -> None:
        # Darknet: weights ~ sqrt(2 / inputs) * U(-1, 1); biases 0.
        w = self.params["weights"]
        rng.random(out=w.reshape(-1), dtype=w.dtype)
        w *= w.dtype.type(2.0)
        w -= w.dtype.type(1.0)
        w *= w.dtype.type(math.sqrt(2.0 / self.inputs))
        self.params["biases"][:] = 0
        if self.batch_normalize:
            self.params["scales"][:] = 1
            self.params["rolling_mean"][:] = 0
            self.params["rolling_variance"][:] = 1

    def allocate(self, batch: int) -> None:
        super().allocate(batch)
        c, h, w = self.in_shape
        dt = self.dtype
        self.out = out_buffer((self.outputs, 1, 1, batch), dt)
        self.tmp = out_buffer((self.outputs, batch), dt)
        self.dx = out_buffer((c, h, w, batch), dt)
        self.bn = (
            batchnorm.BatchNormState(self.outputs, batch, dt) if self.batch_normalize else None
        )

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        xm = x.reshape(self.inputs, self.batch)
        self._xm = xm
        out = self.out.reshape(self.outputs, self.batch)
        w = self.params["weights"]
        if self.bn is not None and train:
            parallel.matmul(w, xm, self.bn.xhat)
            batchnorm.forward_train(self.bn, out, self.tmp, self.params, self.activation)
            return self.out
        parallel.matmul(w, xm, out)
        if self.bn is not None:
            batchnorm.forward_infer(out, self.params, self.activation, self.tmp)
        else:
            out += self.params["biases"][:, None]
            activations.forward(self.activation, out, self.tmp)
        return self.out

    def backward(self, dy: np.ndarray, need_dx: bool) -> np.ndarray | None:
        g = dy.reshape(self.outputs, self.batch)
        out = self.out.reshape(self.outputs, self.batch)
        if self.bn is not None:
            batchnorm.backward(self.bn, g, out, self.tmp, self.params, self.grads, self.activation)
        else:
            activations.backward(self.activation, out, g, self.tmp)
            np.sum(g, axis=1, out=self.grads["biases"])
        parallel.matmul(g, self._xm.T, self.grads["weights"])
        if not need_dx:
            return None
        parallel.matmul(self.params["weights"].T, g, self.dx.reshape(self.inputs, self.batch))
        return self.dx

    def arch(self) -> dict[str, Any]:
        d = super().arch()
        d.update(
            outputs=self.outputs,
            activation=self.activation,
            batch_normalize=self.batch_normalize,
        )
        return d

    def describe(self) -> str:
        bn = " bn" if self.batch_normalize else ""
        return f"connected {self.inputs}->{self.outputs}{bn} {self.activation}"
