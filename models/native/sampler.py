"""Flow-matching (rectified flow) sampling: schedule, Euler and Heun steps, guidance, frame masks.

Pure functions over tensors. Conventions (see ``tessera.models.interface``):
``x_sigma = (1 - sigma) * x0 + sigma * noise``; the model predicts the velocity
``v = noise - x0``, so ``dx/dsigma = v`` and a step from ``sigma`` to ``sigma_next`` is
``x + (sigma_next - sigma) * v``.

Frame-mask conditioning: frames with ``mask == 1`` are given clean latents. They are written
into ``x`` before the first model call and after every step, so the model always sees them
clean (as in training) and they come back bit-exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from tessera.models.interface import keep_given

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x (B, C, T, H, W), sigma (B,)) -> velocity`` (guidance already applied)."""


def shift_sigma(sigma: float, shift: float) -> float:
    """Timestep shift (SD3): ``shift > 1`` keeps more of the schedule at high noise."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def flow_sigmas(steps: int, shift: float = 1.0) -> list[float]:
    """``steps + 1`` noise levels from 1.0 down to 0.0 (uniform in time, then shifted)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [shift_sigma(1.0 - index / steps, shift) for index in range(steps)] + [0.0]


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Rectified-flow interpolation between clean latents and noise."""
    if isinstance(sigma, torch.Tensor) and sigma.ndim == 1:
        sigma = sigma.view(-1, *([1] * (x0.ndim - 1)))
    return (1.0 - sigma) * x0 + sigma * noise


def guided(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance: extrapolate from the unconditional towards the conditional velocity."""
    if isinstance(scale, torch.Tensor) and scale.ndim == 1:
        scale = scale.view(-1, *([1] * (v_cond.ndim - 1)))
    return v_uncond + scale * (v_cond - v_uncond)


def keep_known(x: torch.Tensor, known: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """Overwrite given frames with their clean latents. ``mask`` is ``(B, T)`` in {0, 1}."""
    if mask is None or known is None:
        return x
    return keep_given(x, known, mask)


def euler_step(x: torch.Tensor, velocity: torch.Tensor, sigma: float | torch.Tensor,
               sigma_next: float | torch.Tensor) -> torch.Tensor:
    """``x + (sigma_next - sigma) * v``; the levels are floats or one per item ``(B,)``."""
    delta = sigma_next - sigma
    if isinstance(delta, torch.Tensor):
        delta = delta.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return x + delta * velocity


def item_sigmas(sigmas: Sequence[float] | torch.Tensor, batch: int) -> torch.Tensor:
    """Noise levels as ``(B, S)`` float32: one shared schedule repeated, or one row per item."""
    levels = torch.as_tensor(sigmas, dtype=torch.float32)
    if levels.ndim == 1:
        levels = levels.expand(batch, -1)
    if levels.ndim != 2 or levels.shape[0] != batch:
        raise ValueError(f"noise levels must be (S,) or ({batch}, S), got {tuple(levels.shape)}")
    if levels.shape[1] < 2:
        raise ValueError(f"need at least two noise levels, got {levels.shape[1]}")
    if bool((levels[:, 1:] > levels[:, :-1]).any()):
        raise ValueError("noise levels must not increase")
    return levels


def sample(
    velocity_fn: VelocityFn,
    x: torch.Tensor,
    sigmas: Sequence[float] | torch.Tensor,
    *,
    method: str = "euler",
    known: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integrate from ``sigmas[0]`` to ``sigmas[-1]``; ``method`` is 'euler' or 'heun' (2nd order).

    ``sigmas`` is one schedule for the whole batch, or ``(B, S)``: each item its own levels (items
    of different jobs at different points of their schedules share one forward per step)."""
    if method not in ("euler", "heun"):
        raise ValueError(f"unknown sampler method {method!r}; expected 'euler' or 'heun'")
    levels = item_sigmas(sigmas, x.shape[0]).to(x.device)  # (B, S)
    x = keep_known(x, known, mask)
    for index in range(levels.shape[1] - 1):
        sigma, sigma_next = levels[:, index], levels[:, index + 1]  # (B,) each
        if bool((sigma_next == sigma).all()):
            continue
        velocity = velocity_fn(x, sigma)
        proposal = euler_step(x, velocity, sigma, sigma_next)
        heun = (sigma_next > 0) & (sigma_next != sigma) if method == "heun" else None
        if heun is not None and bool(heun.any()):
            # Heun: average the slopes at both ends (a last step to 0 stays Euler, as in EDM).
            velocity_next = velocity_fn(keep_known(proposal, known, mask), sigma_next)
            corrected = euler_step(x, 0.5 * (velocity + velocity_next), sigma, sigma_next)
            proposal = torch.where(heun.view(-1, *([1] * (x.ndim - 1))), corrected, proposal)
        x = keep_known(proposal, known, mask)
    return x
