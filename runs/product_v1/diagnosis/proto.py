"""Diagnose product-path variants on LOO 369. usage: proto.py STEPS variant..."""
import sys, json, time, copy, numpy as np, torch
sys.path.insert(0, '/work/main')
from fastavatar_engine.generate import AvatarGenerator, RefineView, photo_camera
from fastavatar_engine.evaluate import _metrics
from fastavatar_engine.train.data import load_views
from fastavatar_engine.photofit import product_masks
torch.set_num_threads(2)
steps = int(sys.argv[1]); variants = sys.argv[2:]
D = '/work/shared/data/nersemble_samples/369'
gen = AvatarGenerator('/work/main/runs/loo_369/model')
others = [v for v in load_views(D, camera_indices=list(range(16)), scale=0.5) if v.camera_index != 8]
(full,) = load_views(D, camera_indices=[8], scale=1.0)
photo = (full.image.numpy() * 255 + 0.5).astype(np.uint8)
av0 = gen.generate(photo)
cam = av0.camera
print("est f", cam.K[0,0], "dist", np.linalg.norm(cam.c2w[:3,3]), "true f", full.K[0,0], "dist", np.linalg.norm(full.c2w[:3,3]), flush=True)
pv = gen.photo_view(photo, av0.face, cam)
person = gen.segmenter.segment(photo, av0.face)
dm = full.mask.numpy()
print("IoU person vs dataset", ((person>.5)&(dm>.5)).sum()/((person>.5)|(dm>.5)).sum(), flush=True)
ff = _metrics(av0.gaussians.to_torch(), others)["mean"]; print("ff", ff, flush=True)
bare = dict(symmetry=False, landmark_weight=0, camera=False, silhouette_weight=0, prior_weight=0, detail_steps=0)
def V(c2w, K, m, ignore=None):
    return RefineView(photo, c2w, K, m, mask_is_foreground=True, ignore=ignore)
from fastavatar_engine.face import estimate_camera
from fastavatar_engine.face.pose import default_intrinsics
def pnp(fov):
    K = full.K if fov == 'true' else default_intrinsics(photo.shape[1], photo.shape[0], fov)
    return estimate_camera(av0.face, K=K)
cases = {
 'pnp_person': lambda fov: dict(views=[V(pnp(fov).c2w, pnp(fov).K, person)]),
 'pnp_cut': lambda fov: dict(views=[V(pnp(fov).c2w, pnp(fov).K, pv.mask, pv.ignore)]),
 'est_person': lambda: dict(views=[V(cam.c2w, cam.K, person)]),
 'est_cut': lambda: dict(views=[V(cam.c2w, cam.K, pv.mask, pv.ignore)]),
 'cal_person': lambda: dict(views=[V(full.c2w, full.K, person)]),
 'est_dataset': lambda: dict(views=[V(cam.c2w, cam.K, dm)]),
 'cal_dataset': lambda: dict(views=[V(full.c2w, full.K, dm)]),
}
out = {}
for name in variants:
    kw = dict(bare); extra = {}
    if ':' in name:
        base, opts = name.split(':', 1)
        for kv in opts.split(','):
            k, v = kv.split('='); extra[k] = eval(v)
    else:
        base = name
    if '@' in base:
        base, fov = base.split('@'); fov = fov if fov == 'true' else float(fov)
        kw.update(cases[base](fov))
    else:
        kw.update(cases[base]())
    kw.update(extra)
    av = copy.copy(av0); av.code = av0.code.copy(); av.timings_ms = {}
    t = time.time(); gen.refine(av, photo, steps, **kw)
    m = _metrics(av.gaussians.to_torch(), others)["mean"]
    out[name] = m; print(name, round(time.time()-t,1), m, flush=True)
