import sys, json, numpy as np, os, dataclasses
os.environ["GLOG_minloglevel"]="2"
import torch
from scipy.spatial import cKDTree
from fastavatar_engine.generate import AvatarGenerator
from fastavatar_engine.face import estimate_camera, load_landmark_template
from fastavatar_engine.face.triangulate import triangulate_subject
from fastavatar_engine.cameras import rotation_angle_deg
from fastavatar_engine.train.data import load_views
weights = sys.argv[1] if len(sys.argv)>1 and sys.argv[1]!='default' else None
gen = AvatarGenerator(weights)
tpl = load_landmark_template()
base = gen.model.decoder.base_means.detach().cpu().numpy().astype(np.float64)
tree = cKDTree(base)
dist, nn = tree.query(tpl.points, k=8)
for s in ['128','306','369']:
    root = f'/work/shared/data/nersemble_samples/{s}'
    X = triangulate_subject(root, gen.front_end).head_points
    views = {v.camera_index: v for v in load_views(root, list(range(16)), scale=1.0)}
    res = {'s': s}
    for cam in (8, 2):
        v = views[cam]
        photo = (v.image.numpy()*255+.5).astype(np.uint8)
        av = gen.generate(photo)
        means = np.asarray(av.gaussians.means, np.float64)
        disp = (means[nn] - base[nn]).mean(1)
        adapted = tpl.points + disp
        ok = np.isfinite(X).all(1)
        idx = tpl.pnp_indices[ok[tpl.pnp_indices]]
        e_t = np.linalg.norm(tpl.points[idx]-X[idx],axis=1).mean()*1e3
        e_a = np.linalg.norm(adapted[idx]-X[idx],axis=1).mean()*1e3
        mean_off_t = (tpl.points[idx]-X[idx]).mean(0)*1e3
        mean_off_a = (adapted[idx]-X[idx]).mean(0)*1e3
        r = {}
        for name, pts in (('template', tpl.points), ('adapted', adapted)):
            T = dataclasses.replace(tpl, points=pts) if dataclasses.is_dataclass(tpl) else None
            for kname, K in (('fov30', None), ('trueK', v.K)):
                c = estimate_camera(av.face, K=K, template=T)
                r[f'{name}_{kname}'] = dict(rot=round(rotation_angle_deg(c.c2w, v.c2w),2),
                    centre_mm=round(1e3*float(np.linalg.norm(c.c2w[:3,3]-v.c2w[:3,3])),1), rms=round(c.reprojection_rms_px,2))
        res[cam] = dict(lmk_err_template_mm=round(e_t,2), lmk_err_adapted_mm=round(e_a,2),
                        off_t=np.round(mean_off_t,1).tolist(), off_a=np.round(mean_off_a,1).tolist(), **r)
    print(json.dumps(res), flush=True)
