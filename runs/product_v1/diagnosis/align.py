"""Frame alignment check: score avatars at D @ c2w_j, D = rigid Procrustes(subject landmarks -> template)."""
import sys, copy, time, numpy as np, torch, os
os.environ["GLOG_minloglevel"]="2"
sys.path.insert(0, '/work/main')
from fastavatar_engine.generate import AvatarGenerator, RefineView
from fastavatar_engine.evaluate import _metrics
from fastavatar_engine.train.data import load_views, head_frame_transform
from fastavatar_engine.face.triangulate import triangulate_subject
from fastavatar_engine.face import load_landmark_template
torch.set_num_threads(2)
steps=int(sys.argv[1])
D = '/work/shared/data/nersemble_samples/369'
gen = AvatarGenerator('/work/main/runs/loo_369/model')
sl = triangulate_subject(D, gen.front_end)
T = head_frame_transform(D)
X = sl.points @ T[:3,:3].T + T[:3,3]
tpl = load_landmark_template().points
idx = np.arange(468); ok = np.isfinite(X[idx]).all(1); idx = idx[ok]
A, B = X[idx], tpl[idx]
ma, mb = A.mean(0), B.mean(0)
U, S, Vt = np.linalg.svd((A-ma).T @ (B-mb))
d = np.sign(np.linalg.det(Vt.T @ U.T))
R = Vt.T @ np.diag([1,1,d]) @ U.T
t = mb - R @ ma
Dm = np.eye(4); Dm[:3,:3]=R; Dm[:3,3]=t
import cv2
print('D rot deg', np.degrees(np.linalg.norm(cv2.Rodrigues(R)[0])), 't mm', np.round(t*1000,1), 'resid mm', 1000*np.sqrt(((A@R.T+t-B)**2).sum(1).mean()))
others = [v for v in load_views(D, camera_indices=list(range(16)), scale=0.5) if v.camera_index != 8]
aligned = []
for v in others:
    w = copy.copy(v); w.c2w = Dm @ v.c2w; aligned.append(w)
(full,) = load_views(D, camera_indices=[8], scale=1.0)
photo = (full.image.numpy() * 255 + 0.5).astype(np.uint8)
av0 = gen.generate(photo)
def score(name, g):
    print(name, 'strict', _metrics(g, others)['mean'], '\n   aligned', _metrics(g, aligned)['mean'], flush=True)
score('ff', av0.gaussians.to_torch())
person = gen.segmenter.segment(photo, av0.face)
bare = dict(symmetry=False, landmark_weight=0, camera=False, silhouette_weight=0, prior_weight=0, detail_steps=0)
for name, kw in [('defaults', {}), ('bare_person', dict(bare, views=[RefineView(photo, av0.camera.c2w, av0.camera.K, person, mask_is_foreground=True)])),
                 ('bare_cut', bare)]:
    av = copy.copy(av0); av.code = av0.code.copy(); av.timings_ms = {}
    t0=time.time(); gen.refine(av, photo, steps, **kw); print(name, round(time.time()-t0,1), 's')
    score(name, av.gaussians.to_torch())
