"""Splitting coarse Gaussians where the photo has detail (fitting/densify.py, DetailStage.densify)."""

from __future__ import annotations

import math

import numpy as np
import torch

from fastavatar_engine.cameras import intrinsics, orbit_c2w, viewmat_from_c2w
from fastavatar_engine.fitting.camera import project
from fastavatar_engine.fitting.densify import (SPLIT_OFFSET, SPLIT_SHRINK, projected_radius, split,
                                               split_candidates, view_space_gradient)
from fastavatar_engine.fitting.losses import LossWeights, view_loss
from fastavatar_engine.fitting.stages import DetailStage
from fastavatar_engine.render import GaussianTensors


def _camera(yaw=20.0, pitch=10.0):
    c2w = orbit_c2w(yaw, pitch, 0.8)
    vm = torch.as_tensor(viewmat_from_c2w(c2w), dtype=torch.float64)
    K = torch.as_tensor(intrinsics(500.0, 480.0, 128.0, 120.0), dtype=torch.float64)
    return c2w, vm, K


def test_view_space_gradient_recovers_the_gradient_of_the_projected_mean():
    # L = sum_i <c_i, pi(mu_i)>: its gradient with respect to the 2D mean is c_i by construction
    rng = np.random.default_rng(0)
    _, vm, K = _camera()
    means = torch.tensor(rng.normal(0, 0.08, (50, 3)), dtype=torch.float64, requires_grad=True)
    c = torch.as_tensor(rng.normal(0, 1, (50, 2)), dtype=torch.float64)
    (project(means, vm, K) * c).sum().backward()
    g2 = view_space_gradient(means.detach(), means.grad, vm, K)
    assert torch.allclose(g2, c.norm(dim=-1), rtol=1e-6)
    # a point behind the camera gets nothing
    behind = torch.as_tensor(-viewmat_from_c2w(_camera()[0])[2, :3] * 2.0)[None]  # 2 m behind
    assert float(view_space_gradient(behind, torch.ones(1, 3, dtype=torch.float64), vm, K)[0]) == 0.0


def test_projected_radius_is_three_sigma_of_the_longest_axis_over_depth():
    c2w = orbit_c2w(0.0, 0.0, 1.0)  # camera 1 m in front of the origin
    vm = torch.as_tensor(viewmat_from_c2w(c2w), dtype=torch.float32)
    K = torch.as_tensor(intrinsics(400.0, 400.0, 64.0, 64.0), dtype=torch.float32)
    g = GaussianTensors(torch.zeros(1, 3), torch.log(torch.tensor([[0.001, 0.004, 0.002]])),
                        torch.tensor([[1.0, 0, 0, 0]]), torch.zeros(1), torch.zeros(1, 1, 3))
    assert math.isclose(float(projected_radius(g, vm, K)[0]), 3 * 0.004 * 400 / 1.0, rel_tol=1e-4)


def test_split_candidates_take_coarse_gaussians_with_the_largest_gradients():
    grad = torch.tensor([0.9, 0.1, 0.8, 0.7, 0.0, 0.95])
    radius = torch.tensor([5.0, 5.0, 5.0, 2.0, 9.0, 1.0])  # 3 and 5 too fine, 4 never moved
    assert split_candidates(grad, radius, budget=2).tolist() == [0, 2]
    assert split_candidates(grad, radius, budget=10).tolist() == [0, 1, 2]
    assert split_candidates(grad, radius, budget=0).numel() == 0


def _leaves(n=3, seed=0):
    rng = np.random.default_rng(seed)
    q = torch.as_tensor(rng.normal(size=(n, 4)), dtype=torch.float32)
    q = q / q.norm(dim=-1, keepdim=True)
    leaves = {"means": torch.as_tensor(rng.normal(0, 0.05, (n, 3)), dtype=torch.float32),
              "log_scales": torch.log(torch.as_tensor(rng.uniform(0.001, 0.01, (n, 3)), dtype=torch.float32)),
              "opacity_logits": torch.as_tensor(rng.normal(size=n), dtype=torch.float32),
              "dc": torch.as_tensor(rng.normal(size=(n, 1, 3)), dtype=torch.float32)}
    return leaves, q, torch.as_tensor(rng.normal(size=(n, 15, 3)), dtype=torch.float32)


def test_split_places_two_smaller_children_along_the_longest_axis():
    leaves, rots, rest = _leaves()
    out, rots2, rest2 = split(leaves, rots, rest, torch.tensor([1]))
    assert out["means"].shape == (4, 3) and rots2.shape == (4, 4) and rest2.shape == (4, 15, 3)
    # untouched rows stay, the split row and the appended one are the two children
    for k in leaves:
        assert torch.equal(out[k][[0, 2]], leaves[k][[0, 2]])
    a, b, mu = out["means"][1], out["means"][3], leaves["means"][1]
    assert torch.allclose((a + b) / 2, mu, atol=1e-7)
    # the offset is +-0.8 sigma along the longest axis, computed here from the quaternion by scipy
    from scipy.spatial.transform import Rotation

    w, x, y, z = rots[1].tolist()
    R = Rotation.from_quat([x, y, z, w]).as_matrix()
    s = np.exp(leaves["log_scales"][1].numpy())
    axis = R[:, np.argmax(s)] * SPLIT_OFFSET * s.max()
    assert np.allclose((a - mu).numpy(), axis, atol=1e-6) or np.allclose((a - mu).numpy(), -axis, atol=1e-6)
    for row in (1, 3):
        assert torch.allclose(out["log_scales"][row], leaves["log_scales"][1] - math.log(SPLIT_SHRINK), atol=1e-6)
        assert torch.equal(out["dc"][row], leaves["dc"][1]) and torch.equal(rots2[row], rots[1])
        assert torch.equal(out["opacity_logits"][row], leaves["opacity_logits"][1]) and torch.equal(rest2[row], rest[1])
    # the pair keeps the parent's extent along that axis: mixture variance = d^2 + (s/1.6)^2 ~ s^2
    var = (SPLIT_OFFSET * s.max()) ** 2 + (s.max() / SPLIT_SHRINK) ** 2
    assert abs(var / s.max() ** 2 - 1.0) < 0.05


def _stage_scene(split_budget):
    """A DetailStage on a 24-Gaussian blob fitted to a photo with a sharp edge the blob cannot hold."""
    rng = np.random.default_rng(1)
    n = 24
    g0 = GaussianTensors(torch.as_tensor(rng.normal(0, 0.03, (n, 3)), dtype=torch.float32),
                         torch.full((n, 3), math.log(0.02)), torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                         torch.full((n,), 2.0), torch.zeros(n, 16, 3))
    c2w = orbit_c2w(0.0, 0.0, 0.6)
    K = intrinsics(160.0, 160.0, 32.0, 32.0)
    img = torch.ones(64, 64, 3)
    img[:, :32] = 0.0  # black left half, white right half
    target = {"image": img, "mask": torch.ones(64, 64), "valid": None, "c2w": c2w, "K": K, "w": 64, "h": 64,
              "mirrored": False, "foreground": True, "weight": 1.0, "landmarks": None,
              "viewmat": torch.as_tensor(viewmat_from_c2w(c2w), dtype=torch.float32),
              "K_t": torch.as_tensor(K, dtype=torch.float32)}
    stage = DetailStage(g0, [target], [(c2w, K)], transfer=False, grow=0, lrs=(1e-4, 5e-3, 2.5e-2, 1e-2), reg=0.1,
                        split=split_budget)
    return stage, target


def test_detail_stage_splits_where_the_gradient_is_and_records_parents():
    stage, target = _stage_scene(split_budget=5)
    for _ in range(3):
        loss = view_loss(stage.gaussians(), target, LossWeights()) + stage.drift()
        stage.opt.zero_grad(set_to_none=True)
        loss.backward()
        stage.observe(0)
        stage.opt.step()
    mean_grad = stage.stats.mean.clone()
    assert (mean_grad > 0).sum() > 5
    before = {k: v.detach().clone() for k, v in stage.leaves.items()}
    assert stage.densify(0) == 5
    g = stage.gaussians()
    assert g.means.shape[0] == 29 and g.sh.shape[0] == 29 and g.rotations.shape[0] == 29
    # the five split are the five with the largest gradient (all are coarse here: 0.02 m at 0.6 m
    # is 16 px of 3-sigma radius), and the appended children name them as parents
    top = torch.sort(torch.argsort(mean_grad, descending=True)[:5]).values
    assert stage.parents.tolist() == top.tolist()
    assert torch.allclose((g.means[top] + g.means[24:]) / 2, before["means"][top], atol=1e-6)
    # the optimiser now drives the new leaves: a step moves the appended children's colour
    loss = view_loss(stage.gaussians(), target, LossWeights()) + stage.drift()
    stage.opt.zero_grad(set_to_none=True)
    loss.backward()
    stage.opt.step()
    assert not torch.equal(stage.leaves["dc"][24:], before["dc"][top])
    fitted, parents = stage.result()
    fitted.validate()
    assert parents is not None and len(parents) == fitted.means.shape[0] - 24


def test_no_split_budget_changes_nothing():
    stage, target = _stage_scene(split_budget=0)
    loss = view_loss(stage.gaussians(), target, LossWeights())
    loss.backward()
    stage.observe(0)
    assert stage.densify(0) == 0 and stage.gaussians().means.shape[0] == 24


def test_a_split_grown_gaussian_descends_from_its_template_parent():
    stage, target = _stage_scene(split_budget=2)
    # pretend the last four rows were grown from template Gaussians 3, 4, 5 and 6
    stage.num_template, stage.parents = 20, torch.tensor([3, 4, 5, 6])
    loss = view_loss(stage.gaussians(), target, LossWeights())
    loss.backward()
    stage.observe(0)
    stage.stats.total.zero_()
    stage.stats.total[[2, 21]] = 1.0  # the two largest gradients: template row 2 and grown row 21
    assert stage.densify(0) == 2
    assert stage.parents.tolist() == [3, 4, 5, 6, 2, 4]
    assert stage.gaussians().means.shape[0] == 26
