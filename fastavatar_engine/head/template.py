"""A model's Gaussian template bound to the head model: the template of any person's head.

:class:`BoundTemplate` binds a decoder's template Gaussians (``base_means`` [K,3] m,
``base_scales`` [K,3] log, ``base_rotations`` [K,4] w,x,y,z) to the head model's rest mesh, the
ICT head fitted to the engine template's own landmarks (``rest_identity``/``rest_expression`` of
the registration, ``tools/build_head_registration.py``). :meth:`BoundTemplate.deform` then gives
the template on another head: identity coefficients [100] (the photographed person's, from
:func:`fastavatar_engine.head.fit.fit_head`) and optionally expression coefficients [53] (default:
the rest expression, so the template keeps its own expression and a photo's is not baked in).

Only skin triangles bind (the face and the head-and-neck part); the Gaussians of hair, ears,
shoulders bind to their closest skin triangle with an offset (:mod:`.binding`); those around
the lip seam bind to their own lip, and those straddling it fade as the lips part (:mod:`.lips`).
The Gaussians inside the eye openings are the eyeball's and no expression moves them; a blink
raises the opacity of the eye's core instead (:mod:`.eyes`). Both are opacity offsets linear in
the coefficients (:meth:`BoundTemplate.opacity_offsets`).
"""

from __future__ import annotations

import numpy as np

from .basis import NUM_EXPRESSION, NUM_IDENTITY, HeadModel, load_head_model
from .binding import HeadBinding
from .eyes import EyeRig
from .lips import LipSeam, bind_lips


class BoundTemplate:
    """Template Gaussians bound to the head model.

    Args:
        means: [K,3] template centres (metres, engine head frame); ``log_scales`` [K,3];
            ``rotations`` [K,4] (w,x,y,z, any norm: the norm is kept).
        model: the head model (the packaged one by default).
    """

    def __init__(self, means, log_scales, rotations, model: HeadModel | None = None):
        import torch

        self.model = model or load_head_model()
        self.rest_identity = self.model.rest_identity()
        self.rest_expression = np.asarray(self.model.registration.get("rest_expression", np.zeros(NUM_EXPRESSION)),
                                          dtype=np.float64)
        rest = self.model.vertices(self.rest_identity, self.rest_expression)
        self.means = torch.as_tensor(np.asarray(means), dtype=torch.float32)
        self.log_scales = torch.as_tensor(np.asarray(log_scales), dtype=torch.float32)
        self.rotations = torch.as_tensor(np.asarray(rotations), dtype=torch.float32)
        self.binding = HeadBinding.bind(self.means.double().numpy(), rest, self.model.triangles)
        self.binding = bind_lips(self.binding, self.means.double().numpy(), rest, self.model, self.rest_expression)
        self._rest_coeffs = np.r_[self.rest_identity, self.rest_expression]
        # only the vertices of bound triangles are evaluated: the binding indexes them locally
        tris = self.model.triangles
        self.used = np.unique(tris[self.binding.tri])
        lut = np.full(self.model.num_vertices, -1, np.int64)
        lut[self.used] = np.arange(len(self.used))
        self.binding.triangles = lut[tris]
        self.eyes = EyeRig(self.means.double().numpy(), rest, self.model)
        self._eye_binding = self.binding.rows(self.eyes.rows)
        self.lips = LipSeam(self.means.double().numpy(), rest, self.model)

    def coefficients(self, identity=None, expression=None) -> np.ndarray:
        """[153] float64 head coefficients (identity first) with the rest values where None.

        Raises ``ValueError`` for the wrong length or non-finite values."""
        c = self._rest_coeffs.copy()
        for arr, lo, n, name in ((identity, 0, NUM_IDENTITY, "identity"), (expression, NUM_IDENTITY, NUM_EXPRESSION,
                                                                          "expression")):
            if arr is None:
                continue
            a = np.asarray(arr, dtype=np.float64).ravel()
            if a.size != n or not np.isfinite(a).all():
                raise ValueError(f"head {name}: expected {n} finite coefficients, got {a.size}")
            c[lo:lo + n] = a
        return c

    def vertices(self, coeffs, dtype=None):
        """[U,3] torch vertices (engine frame) of the bound triangles' vertices (``self.used``, in
        that order) for head coefficients [153] (numpy or torch)."""
        import torch

        key = str(dtype or torch.float32)
        cache = self.__dict__.setdefault("_basis", {})
        if key not in cache:
            mean, modes = self.model.torch_basis(dtype=dtype or torch.float32)
            cols = torch.as_tensor(np.stack([3 * self.used, 3 * self.used + 1, 3 * self.used + 2], 1).ravel())
            cache[key] = (mean[cols].contiguous(), modes[:, cols].contiguous())
        mean, modes = cache[key]
        c = torch.as_tensor(coeffs, dtype=mean.dtype)
        return (mean + c @ modes).view(-1, 3)

    def deform(self, identity=None, expression=None):
        """``(means [K,3], log_scales [K,3], rotations [K,4])`` float32 torch: the template on the
        head with these coefficients (None: the rest value). Rotations keep the template's norms.
        The eye rows (``eyes.rows``) are carried at the rest expression whatever the expression."""
        import torch

        c = self.coefficients(identity, expression)
        V = self.vertices(c)
        mu, rot, ls = self.binding.deform(V, self.rotations, self.log_scales)
        if len(self.eyes.rows) and not np.array_equal(c[NUM_IDENTITY:], self.rest_expression):
            still = self._still_vertices(c[:NUM_IDENTITY], V.dtype)
            i = torch.as_tensor(self.eyes.rows)
            mu_e, rot_e, ls_e = self._eye_binding.deform(still, self.rotations[i].to(V.dtype),
                                                         self.log_scales[i].to(V.dtype))
            mu, rot, ls = mu.index_put((i,), mu_e), rot.index_put((i,), rot_e), ls.index_put((i,), ls_e)
        rot = rot * self.rotations.norm(dim=-1, keepdim=True)
        return mu, ls, rot

    def _still_vertices(self, identity: np.ndarray, dtype):
        """[U,3] the bound vertices at ``identity`` [100] and the rest expression, cached for the
        last identity (a driven avatar decodes many expressions on one head)."""
        key = (identity.tobytes(), str(dtype))
        cached = self.__dict__.get("_still")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_still"] = (key, self.vertices(self.coefficients(identity, None), dtype=dtype))
        return cached[1]

    def opacity_offsets(self, expression) -> tuple[np.ndarray, np.ndarray] | None:
        """(rows [C] int64, logits [C] float64) to add to the decoded opacities at ``expression``
        [53] (absolute; None: the rest expression), or None when nothing changes: the blink on
        the eyes' carriers (:mod:`.eyes`), the lips' parting on the seam's faders (:mod:`.lips`)."""
        if expression is None:
            return None
        e = self.coefficients(None, expression)[NUM_IDENTITY:]
        parts = [(self.eyes.carriers, self.eyes.opacity_offsets(e, self.rest_expression)),
                 (self.lips.rows, self.lips.opacity_offsets(e, self.rest_expression))]
        parts = [(r, d) for r, d in parts if len(r) and d.any()]
        if not parts:
            return None
        return np.concatenate([r for r, _ in parts]), np.concatenate([d for _, d in parts])

    def is_rest(self, identity=None, expression=None) -> bool:
        return np.allclose(self.coefficients(identity, expression), self._rest_coeffs)
