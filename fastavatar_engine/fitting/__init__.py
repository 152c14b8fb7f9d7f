"""Fitting an avatar to photos (refinement and the likeness fit), one module per concern.

* :mod:`.refine` — :func:`~.refine.refine`, the orchestration (what ``AvatarGenerator.refine`` runs).
* :mod:`.views` — the photos as the fit sees them (:class:`~.views.RefineView`, resampled targets).
* :mod:`.losses` — photometric, silhouette and landmark terms per view.
* :mod:`.camera` — per-photo camera corrections, mirrored for the mirrored view.
* :mod:`.stages` — the decoder stage (code + weights, or the appearance heads) and the per-Gaussian
  detail stage.
* :mod:`.appearance` — visible Gaussians and the appearance transfer (photo colours).
* :mod:`.grow` — Gaussians grown where the photo's person reaches past the avatar (hair).

The camera and head-shape solve from landmarks is :mod:`fastavatar_engine.head.fit`.
"""
