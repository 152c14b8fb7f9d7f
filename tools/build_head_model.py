"""Reduce ICT-FaceKit to the head-model basis the engine ships (``fastavatar_engine/data/ict_head.*``).

    python tools/build_head_model.py --source /work/.mirror/ICT-VGL+ICT-FaceKit/repo

``--source`` is either a checkout of GitHub ``ICT-VGL/ICT-FaceKit`` (a folder with
``FaceXModel/``) or the bare git directory that the search tool's ``fetch`` leaves (read with
``git show``; ``--commit`` picks the revision, default ``HEAD``). ICT-FaceKit is MIT-licensed
(Copyright (c) 2020 USC Institute for Creative Technologies); its notice travels with the output.

What is kept and why (the card ``ICT_HEAD.md`` says the same):

* vertices 0-11,247 only: the face (0-9,408) and the head and neck (9,409-11,247), i.e. the skin
  surface the template Gaussians bind to. The mouth socket, eye sockets, gums, teeth, eyeballs,
  lacrimal fluid, eye blend, occlusion and lashes are interior or see-through parts that no
  photo constrains and no Gaussian binds to.
* triangles: the neutral mesh's quads split along their 0-2 diagonal, keeping faces whose
  vertices all lie in the kept range (ICT's OBJ is 1-based and mixes quads and triangles).
* ``neutral`` [V,3] float32 in centimetres (ICT's own frame: y up, the face towards +z);
  float16 would round a 20 cm coordinate to 0.16 mm, so the 135 kB neutral stays float32.
* ``identity`` [100,V,3] float16: ``identityNNN.obj - neutral`` (ICT's
  ``face_model_io._compute_shape_mode_deltas``). The modes are already scaled by their standard
  deviation, so coefficients are ~N(0,1).
* ``expression`` [53,V,3] float16: ``<name>.obj - neutral`` for the 53 ARKit-named shapes in
  ``vertex_indices.json``'s ``expressions`` order; coefficients in [0,1].
* ``landmarks68`` [68] int32: ICT's Multi-PIE 68-point landmark vertices.

float16 keeps ~3 significant digits of each delta (the largest, ``jawOpen``, 3.5 cm, to 0.02 mm).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "fastavatar_engine" / "data"
#: Vertices kept: face 0-9,408 and head and neck 9,409-11,247 (ICT README's ranges).
NUM_KEPT = 11248
NUM_IDENTITY = 100


class _Source:
    """Reads files from a checkout folder or, with ``git show``, from a (bare) git directory."""

    def __init__(self, path: Path, commit: str):
        self.path = Path(path)
        self.is_checkout = (self.path / "FaceXModel").is_dir()
        self.commit = commit
        if not self.is_checkout:
            self.commit = subprocess.run(["git", "--git-dir", str(self.path), "rev-parse", commit], check=True,
                                         capture_output=True, text=True).stdout.strip()

    def read(self, rel: str) -> str:
        if self.is_checkout:
            return (self.path / rel).read_text()
        return subprocess.run(["git", "--git-dir", str(self.path), "show", f"{self.commit}:{rel}"], check=True,
                              capture_output=True, text=True).stdout


def parse_obj(text: str, with_faces: bool = False):
    """Vertices [N,3] float64 (and triangles [F,3] int64, 0-based) of an OBJ's text.

    Polygons with more than three corners are fanned from their first corner.
    """
    verts, faces = [], []
    for line in text.splitlines():
        if line.startswith("v "):
            verts.append(line.split()[1:4])
        elif with_faces and line.startswith("f "):
            idx = [int(tok.split("/")[0]) - 1 for tok in line.split()[1:]]
            faces.extend([idx[0], idx[i], idx[i + 1]] for i in range(1, len(idx) - 1))
    v = np.asarray(verts, dtype=np.float64)
    return (v, np.asarray(faces, dtype=np.int64)) if with_faces else v


def build(source: _Source) -> tuple[dict, dict]:
    """Arrays and metadata of the reduced basis (see the module docstring)."""
    config = json.loads(source.read("FaceXModel/vertex_indices.json"))
    names = list(config["expressions"])
    neutral, faces = parse_obj(source.read("FaceXModel/generic_neutral_mesh.obj"), with_faces=True)
    if neutral.shape[0] != 26719:
        raise ValueError(f"unexpected neutral mesh: {neutral.shape[0]} vertices (ICT-FaceKit has 26,719)")
    tris = faces[(faces < NUM_KEPT).all(axis=1)]

    def deltas(files):
        out = np.empty((len(files), NUM_KEPT, 3), np.float32)
        for i, rel in enumerate(files):
            v = parse_obj(source.read(rel))
            if v.shape != neutral.shape:
                raise ValueError(f"{rel}: {v.shape[0]} vertices, expected {neutral.shape[0]}")
            out[i] = (v - neutral)[:NUM_KEPT]
            print(f"  {rel}: max |delta| {np.abs(out[i]).max():.3f} cm", file=sys.stderr)
        return out

    identity = deltas([f"FaceXModel/identity{i:03d}.obj" for i in range(NUM_IDENTITY)])
    expression = deltas([f"FaceXModel/{n}.obj" for n in names])
    arrays = {
        "neutral": neutral[:NUM_KEPT].astype(np.float32),
        "triangles": tris.astype(np.int32),
        "identity": identity.astype(np.float16),
        "expression": expression.astype(np.float16),
        "landmarks68": np.asarray(config["idx_to_landmark_verts"], dtype=np.int32),
    }
    meta = {
        "format": "fastavatar.ict_head",
        "version": "1",
        "source": "github.com/ICT-VGL/ICT-FaceKit",
        "source_commit": source.commit,
        "license": "MIT, Copyright (c) 2020 USC Institute for Creative Technologies",
        "units": "centimetres",
        "frame": "ICT-FaceKit's own: y up, the face towards +z, +x the subject's left",
        "vertex_ranges": json.dumps({"face": [0, 9408], "head_and_neck": [9409, 11247]}),
        "expression_names": json.dumps(names),
        "identity_scale": "modes scaled by their standard deviation: coefficients ~N(0,1)",
    }
    return arrays, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, help="ICT-FaceKit checkout or bare git directory")
    ap.add_argument("--commit", default="HEAD")
    ap.add_argument("--out", default=str(OUT_DIR / "ict_head.safetensors"))
    args = ap.parse_args()
    from safetensors.numpy import save_file

    t0 = time.time()
    src = _Source(Path(args.source), args.commit)
    arrays, meta = build(src)
    out = Path(args.out)
    tmp = out.with_suffix(".tmp")
    save_file(arrays, str(tmp), metadata=meta)
    tmp.replace(out)
    print(json.dumps({"out": str(out), "bytes": out.stat().st_size, "seconds": round(time.time() - t0, 1),
                      "commit": src.commit, "vertices": int(arrays["neutral"].shape[0]),
                      "triangles": int(arrays["triangles"].shape[0])}))


if __name__ == "__main__":
    main()
