"""The pi-Flow student: the teacher's backbone with a K-component u-space GM policy head, initialised
from the teacher (as LakonLab does).

- every trunk weight is the teacher's;
- the read-out layer's rows of the K means are the teacher's velocity read-out (for a GMFlow teacher with
  K_t components: component k takes the teacher's component k mod K_t), its mean biases get N(0, noise^2)
  noise (one draw per component and channel);
- the logit rows are zero (equal weights) for a flow-matching teacher, the teacher's for a GMFlow one;
- the log-std starts at ``init_logstd`` (log 0.05): the last log-std layer has zero weights and that bias.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..experiments.recipe import Recipe

INIT_LOGSTD = math.log(0.05)


def student_recipe(teacher: Recipe, num_components: int, sample: dict[str, Any]) -> Recipe:
    """The student's recipe: the teacher's with K = ``num_components``, a learned log-std, no spectrum net,
    and ``sample`` as its ``[sample]`` table (solver "piflow", the student's NFE, ...)."""
    raw = teacher.as_dict()
    model = dict(raw["model"])
    model.pop("spectrum", None)
    model.pop("constant_logstd", None)
    model["num_components"] = num_components
    if model["backbone"] != "mlp2d":
        model.setdefault("logstd_inner_dim", 256)
    raw.update(kind="gmflow", model=model, sample={**raw["sample"], **sample})
    from ..experiments.recipe import recipe_from_dict

    return recipe_from_dict(raw, f"{teacher.source} (pi-Flow student)", warn_renamed=False)


def _readout(model: nn.Module) -> tuple[nn.Module, int, Any]:
    """(the layer producing the GM channels, pixels per output row group, the GM head) of a model."""
    net = getattr(model, "net", model)
    if hasattr(net, "proj_out_2"):  # GM-DiT: p x p pixels per token, channel fastest
        return net.proj_out_2, net.config.patch_size ** 2, net.gm_out
    if hasattr(net, "unet"):  # GM-UNet: a convolution to the GM channels
        return net.unet.conv_out, 1, net.gm_out
    return model.proj, 1, model.head  # the 2-D MLP


@torch.no_grad()
def init_from_teacher(student: nn.Module, teacher: nn.Module, teacher_is_gm: bool, *, noise: float = 0.05,
                      init_logstd: float = INIT_LOGSTD, generator: torch.Generator | None = None) -> None:
    """Initialise ``student`` from ``teacher`` (see the module docstring); both are models of one backbone.

    Args:
        teacher_is_gm: a GMFlow teacher (its logits are copied) rather than flow matching (logits zero).
        noise: std of the noise on the mean biases.
        init_logstd: the initial log-std of the policy (u space).
    """
    s_layer, positions, s_head = _readout(student)
    t_layer, _, t_head = _readout(teacher)
    teacher_state = teacher.state_dict()
    for name, param in student.state_dict().items():
        if name in teacher_state and teacher_state[name].shape == param.shape:
            param.copy_(teacher_state[name])
    k_s, k_t, c = s_head.num_components, t_head.num_components, s_head.out_channels
    g_s, g_t = s_head.raw_channels, t_head.raw_channels
    w_s, w_t = s_layer.weight, t_layer.weight
    b_s, b_t = s_layer.bias, t_layer.bias
    mean_noise = torch.randn(k_s, c, generator=generator, dtype=torch.float64) * noise
    for q in range(positions):
        for k in range(k_s):
            for ch in range(c):
                row_s, row_t = q * g_s + k * c + ch, q * g_t + (k % k_t) * c + ch
                w_s[row_s] = w_t[row_t]
                b_s[row_s] = b_t[row_t] + float(mean_noise[k, ch])
            logit_s, logit_t = q * g_s + k_s * c + k, q * g_t + k_t * c + (k % k_t)
            if teacher_is_gm:
                w_s[logit_s], b_s[logit_s] = w_t[logit_t], b_t[logit_t]
            else:
                w_s[logit_s], b_s[logit_s] = 0.0, 0.0
        if s_head.logstd_source == "features":  # the 2-D MLP's log-std channel
            w_s[q * g_s + g_s - 1], b_s[q * g_s + g_s - 1] = 0.0, init_logstd
    if s_head.logstd_source == "embedding":
        last = s_head.logstd_layers[-1]
        last.weight.zero_()
        last.bias.fill_(init_logstd)
