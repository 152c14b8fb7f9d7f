"""The photo's camera inside a refinement: a rigid + focal correction per photo, mirrored for its
mirrored view, and the refined cameras written back (OpenGL c2w in the head frame, K in pixels)."""

from __future__ import annotations

import numpy as np
import torch

S4 = np.diag([-1.0, 1.0, 1.0, 1.0])


def camera_delta(p: torch.Tensor) -> torch.Tensor:
    """4x4 rigid correction (camera frame) from [rotation axis-angle (3), translation m (3), ...]."""
    w = p[:3]
    theta = w.norm().clamp_min(1e-12)
    k = w / theta
    Kx = torch.zeros(3, 3, dtype=p.dtype, device=p.device)
    Kx[0, 1], Kx[0, 2], Kx[1, 0], Kx[1, 2], Kx[2, 0], Kx[2, 1] = -k[2], k[1], k[2], -k[0], -k[1], k[0]
    R = torch.eye(3, dtype=p.dtype, device=p.device) + torch.sin(theta) * Kx + (1 - torch.cos(theta)) * (Kx @ Kx)
    top = torch.cat([R, p[3:6, None]], 1)
    return torch.cat([top, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=p.dtype, device=p.device)], 0)


def corrected_camera(view: dict, p: torch.Tensor, as_numpy: bool = False):
    """(c2w [4,4], K [3,3]) of a refinement target with the correction ``p`` [7] of its photo
    (a mirrored view gets the mirrored correction ``S delta S``); torch tensors on p's device."""
    delta = camera_delta(p)
    if view["mirrored"]:
        S = torch.as_tensor(S4, dtype=p.dtype, device=p.device)
        delta = S @ delta @ S
    c2w = torch.as_tensor(view["c2w"], dtype=p.dtype, device=p.device) @ delta
    K = torch.as_tensor(view["K"], dtype=p.dtype, device=p.device).clone()
    f = torch.exp(p[6])
    K = torch.stack([K[0] * torch.stack([f, f, torch.ones_like(f)]), K[1] * torch.stack([f, f, torch.ones_like(f)]), K[2]])
    if as_numpy:
        return c2w.detach().cpu().double().numpy(), K.detach().cpu().double().numpy()
    return c2w, K


def store_refined_cameras(avatar, views: list, targets: list, cam_params: torch.Tensor) -> None:
    """Write the refined cameras back: each non-mirrored view's ``c2w`` / ``K`` (pixels of its
    own photo) and the avatar's camera (the first photo's), keeping the CameraEstimate type."""
    import dataclasses

    from ..face.pose import camera_angles

    for i, (v, t) in enumerate(zip(views, targets)):
        if v.mirrored:
            continue
        c2w, _ = corrected_camera(t, cam_params[t["cam_group"]], as_numpy=True)
        K = np.array(v.K, np.float64, copy=True)
        K[:2, :2] *= float(torch.exp(cam_params[t["cam_group"], 6]))
        v.c2w, v.K = c2w, K
        if v.camera is not None:
            yaw, pitch, roll = camera_angles(c2w)
            v.camera = dataclasses.replace(v.camera, c2w=c2w, K=K, yaw_deg=yaw, pitch_deg=pitch, roll_deg=roll,
                                           focal_source=f"{v.camera.focal_source}+refined")
        if i == 0 and avatar.camera is not None:
            avatar.camera = v.camera if v.camera is not None else dataclasses.replace(avatar.camera, c2w=c2w, K=K)


def project(points: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """[N,2] pixels (continuous) of [N,3] head-frame points; ``viewmat``: OpenCV world-to-camera 4x4."""
    pc = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = pc[:, 2:3].clamp_min(1e-6)
    return torch.cat([K[0, 0] * pc[:, :1] / z + K[0, 2], K[1, 1] * pc[:, 1:2] / z + K[1, 2]], 1)
