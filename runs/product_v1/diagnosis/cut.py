import sys, copy, time, numpy as np, torch, os
exec(open(__file__.replace('cut.py', 'align.py')).read().split("person = gen.segmenter")[0])
from fastavatar_engine.photofit import product_masks
from fastavatar_engine.render import render
from fastavatar_engine.cameras import scale_intrinsics
import cv2
person = gen.segmenter.segment(photo, av0.face)
base_view = gen.photo_view(photo, av0.face, av0.camera)
d = gen.model.decoder
from fastavatar_engine.render.types import GaussianTensors
tpl = GaussianTensors(d.base_means, d.base_scales, d.base_rotations, d.base_opacity, torch.cat([d.base_sh0, d.base_shN], 1))
h, w = photo.shape[:2]; s_ = 256/max(h,w); w1, h1 = round(w*s_), round(h*s_)
with torch.no_grad(): _, al = render(tpl, av0.camera.c2w, scale_intrinsics(av0.camera.K, w1/w, h1/h), w1, h1)
al = cv2.resize(al.numpy().astype(np.float32), (w, h))
bare = dict(symmetry=False, landmark_weight=0, camera=False, silhouette_weight=0, prior_weight=0, detail_steps=0)
for spec in sys.argv[2:]:
    margin, opts = spec.split('/')
    fg, ig = product_masks(person, av0.face.landmarks, al, margin=float(margin))
    v = copy.copy(base_view); v.mask = fg; v.ignore = ig
    kw = dict(views=[v])
    for kv in opts.split(','):
        if kv == 'bare': kw.update(bare); continue
        if kv == 'defaults': continue
        k, val = kv.split('='); kw[k] = eval(val)
    av = copy.copy(av0); av.code = av0.code.copy(); av.timings_ms = {}
    t0=time.time(); gen.refine(av, photo, steps, **kw); print(spec, round(time.time()-t0,1), 's')
    score(spec, av.gaussians.to_torch())
