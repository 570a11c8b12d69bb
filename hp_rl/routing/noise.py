"""Routing noise keyed by observation content, so a replayed observation gets the same noise.

On-policy algorithms compute old log-probabilities during the rollout and new ones during the update.
Noise drawn afresh at each call would route the same observation differently in the two passes and bias
the probability ratio. Here the noise is a pure function of (observation bytes, seed, epoch): the update
sees exactly the noise the rollout saw, and advancing the epoch re-draws it for the next rollout.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

__all__ = ["content_keyed_normal"]

_MASK_24 = (1 << 24) - 1
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64
_MIX_1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX_2 = -7723592293110705685  # 0x94D049BB133111EB


def _wrap64(value: int) -> int:
    """A Python integer reduced to the signed int64 it would wrap to."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _mix(h: Tensor) -> Tensor:
    """splitmix64 finaliser on int64 tensors (wrapping arithmetic, logical shifts emulated)."""
    h = h ^ ((h >> 30) & ((1 << 34) - 1))
    h = h * _MIX_1
    h = h ^ ((h >> 27) & ((1 << 37) - 1))
    h = h * _MIX_2
    return h ^ ((h >> 31) & ((1 << 33) - 1))


def _content_hash(x: Tensor, seed: int) -> Tensor:
    """One int64 per sample from the exact bit pattern of its float32 values.

    :param x: ``(B, ...)`` observations.
    :return: ``(B,)`` int64 hashes; equal rows give equal hashes whatever the batch.
    """
    flat = x.detach().reshape(x.shape[0], -1).float().contiguous().view(torch.int32)
    # int32 products and sums wrap and are exact, so the hash does not depend on reduction order; staying in
    # int32 avoids two int64 copies of a batch of frames.
    weights = _position_weights(flat.shape[1], seed, str(x.device))
    return _mix((flat * weights).sum(dim=1, dtype=torch.int32).long() + seed)


@functools.lru_cache(maxsize=16)
def _position_weights(length: int, seed: int, device: str) -> Tensor:
    """``(length,)`` odd int32 multipliers, one per input position."""
    positions = torch.arange(length, device=device, dtype=torch.int64)
    return (_mix(positions * _GOLDEN + seed) | 1).to(torch.int32)


_U64 = (1 << 64) - 1


def _mix_numpy(h: np.ndarray) -> np.ndarray:
    """:func:`_mix` on uint64 arrays, where shifts are logical and products wrap natively."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(_MIX_1 & _U64)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(_MIX_2 & _U64)
    return h ^ (h >> np.uint64(31))


@functools.lru_cache(maxsize=16)
def _position_weights_numpy(length: int, seed: int) -> np.ndarray:
    return _position_weights(length, seed, "cpu").numpy()


def _uniform_bits_torch(x: Tensor, num: int, seed: int, epoch: int) -> Tensor:
    """``(B, 2 * num)`` float32 holding 24-bit draws keyed by each row's content, ``seed`` and ``epoch``."""
    base = _content_hash(x, seed) + _wrap64(epoch * _MIX_1)  # (B,)
    counters = torch.arange(2 * num, device=x.device, dtype=torch.int64)
    return (_mix(base[:, None] + (counters[None, :] + 1) * _GOLDEN) & _MASK_24).float()


def _uniform_bits_numpy(x: Tensor, num: int, seed: int, epoch: int) -> Tensor:
    """The ``(B, 2 * num)`` 24-bit draws of :func:`content_keyed_normal`, bit for bit, computed in numpy.

    On CPU each torch operator costs several microseconds on a handful of rows; numpy does the same
    integer arithmetic in about half the time at the batch sizes of acting.
    """
    flat = x.detach().reshape(x.shape[0], -1).float().contiguous().numpy().view(np.int32)
    with np.errstate(over="ignore"):
        summed = (flat * _position_weights_numpy(flat.shape[1], seed)).sum(axis=1, dtype=np.int32)
        hashed = _mix_numpy((summed.astype(np.int64) + np.int64(seed)).view(np.uint64))
        base = hashed + np.uint64(_wrap64(epoch * _MIX_1) & _U64)
        counters = np.arange(1, 2 * num + 1, dtype=np.uint64) * np.uint64(_GOLDEN & _U64)
        bits = _mix_numpy(base[:, None] + counters[None, :]) & np.uint64(_MASK_24)
    return torch.from_numpy(bits.astype(np.float32))


def content_keyed_normal(x: Tensor, num: int, seed: int, epoch: int) -> Tensor:
    """Standard normal draws that depend only on each sample's content, ``seed`` and ``epoch``.

    :param x: ``(B, ...)`` observations.
    :param num: draws per sample.
    :param seed: stream seed.
    :param epoch: re-draw counter; a new epoch gives independent noise for the same sample.
    :return: ``(B, num)`` float32 tensor of N(0, 1) values.
    """
    draw = _uniform_bits_numpy if x.device.type == "cpu" else _uniform_bits_torch
    bits = draw(x, num, _wrap64(seed), epoch)
    uniform = (bits + 0.5) / float(1 << 24)  # open interval (0, 1)
    u1, u2 = uniform[:, :num], uniform[:, num:]
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * torch.pi * u2)
