"""FastAvatar training pipeline (Liang et al., TMLR 2026, arXiv 2508.18389, Sec. 3).

Stages, each resumable and writing into one run folder:

a. ``fit``      per-subject 3DGS fit of the K template-ordered Gaussians (:mod:`.fit`)
b. ``template`` per-parameter mean over the subjects' fits (:mod:`.template`)
c. ``decoder``  auto-decoder: decoder weights, Gaussian embeddings and per-subject codes w_i
d. ``encoder``  identity backbone embedding -> w, decoder frozen

All stages work in the **FLAME head frame** (y up, face towards +z, metres): each sample
subject's points and cameras are un-rotated by its FLAME head rotation (see
:func:`fastavatar_engine.face.triangulate.flame_head_rotation`), the frame of the 3D landmark
template used to estimate a photo's camera — so generated avatars and estimated cameras agree.
"""
