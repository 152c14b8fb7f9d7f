import sys, json, numpy as np, os
os.environ["GLOG_minloglevel"]="2"
sys.path.insert(0, '/work/main')
import cv2
from fastavatar_engine.face import estimate_camera, FaceFrontEnd
from fastavatar_engine.train.data import load_views
fe = FaceFrontEnd()
out=[]
for s in ['128','306','369']:
    root = f'/work/shared/data/nersemble_samples/{s}'
    for v in load_views(root, list(range(16)), scale=1.0):
        photo = (v.image.numpy()*255+.5).astype(np.uint8)
        faces = fe.detect(photo)
        if not faces: continue
        c = estimate_camera(max(faces, key=lambda f: f.area), K=v.K)
        D = c.c2w @ np.linalg.inv(v.c2w)   # world-frame correction: est = D @ true
        rv = cv2.Rodrigues(D[:3,:3])[0][:,0]
        # camera-frame error
        E = np.linalg.inv(v.c2w) @ c.c2w
        rc = cv2.Rodrigues(E[:3,:3])[0][:,0]
        out.append((s, v.camera_index, np.degrees(rv), D[:3,3], np.degrees(rc), E[:3,3]))
        print(s, v.camera_index, 'world rot', np.round(np.degrees(rv),2), 'world t', np.round(D[:3,3]*1000,1), 'cam rot', np.round(np.degrees(rc),2), 'cam t mm', np.round(E[:3,3]*1000,1))
for s in ['128','306','369','all']:
    sel=[o for o in out if s=='all' or o[0]==s]
    print(s, 'mean world rot', np.round(np.mean([o[2] for o in sel],0),2), 'std', np.round(np.std([o[2] for o in sel],0),2), 'mean world t mm', np.round(1000*np.mean([o[3] for o in sel],0),1))
