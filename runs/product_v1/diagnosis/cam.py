import sys, json, numpy as np, os
os.environ["GLOG_minloglevel"]="2"
sys.path.insert(0, '/work/main')
from fastavatar_engine.face import estimate_camera, FaceFrontEnd
from fastavatar_engine.face.pose import default_intrinsics
from fastavatar_engine.cameras import project_points, rotation_angle_deg
from fastavatar_engine.train.data import load_views, subject_points
fe = FaceFrontEnd()
fovs = [14,18,22,26,30,36,44,54]
rows=[]
for s in ['128','306','369']:
    root = f'/work/shared/data/nersemble_samples/{s}'
    pts = subject_points(root)
    for v in load_views(root, list(range(16)), scale=1.0):
        photo = (v.image.numpy()*255+.5).astype(np.uint8)
        faces = fe.detect(photo)
        if not faces: print(s, v.camera_index, 'noface'); continue
        f0 = max(faces, key=lambda f: f.area)
        h, w = photo.shape[:2]
        true_uv,_ = project_points(pts, v.c2w, v.K)
        tfov = np.degrees(2*np.arctan(0.5*max(w,h)/v.K[1,1]))
        r = {'s':s,'cam':v.camera_index,'true_fov':round(tfov,1),'true_dist':round(float(np.linalg.norm(v.c2w[:3,3])),3)}
        for fov in fovs+['true']:
            K = v.K if fov=='true' else default_intrinsics(w,h,fov)
            c = estimate_camera(f0, K=K)
            uv,_ = project_points(pts, c.c2w, c.K)
            r[str(fov)] = dict(rms=round(c.reprojection_rms_px,2), rot=round(rotation_angle_deg(c.c2w, v.c2w),2),
                centre=round(float(np.linalg.norm(c.c2w[:3,3]-v.c2w[:3,3])),3), dist=round(c.distance_m,3),
                pts=round(float(np.nanmean(np.linalg.norm(uv-true_uv,axis=1))),1))
        rows.append(r); print(json.dumps(r), flush=True)
json.dump(rows, open('cam.json','w'))
for k in [str(f) for f in fovs]+['true']:
    print(k, {m: round(float(np.mean([r[k][m] for r in rows])),3) for m in ['rms','rot','centre','pts']})
