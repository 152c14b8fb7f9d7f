"""The 53 expression coefficients an avatar takes: ARKit blendshape names in the head model's
(ICT-FaceKit's) order, and the groups the Blender panel shows them in.

ICT-FaceKit's expression basis is Apple ARKit's 52 blendshapes without ``tongueOut``, with
``browInnerUp`` and ``cheekPuff`` split into left and right (``_L``/``_R`` = the subject's left and
right). The list is fixed by ``fastavatar_engine/data/ict_head.safetensors``; a test checks that the
two agree. numpy-free, so Blender's process can import it.
"""

from __future__ import annotations

#: The 53 names, in the order of every ``expression`` [53] array (decode, files, the protocol).
EXPRESSION_NAMES: tuple[str, ...] = (
    "browDown_L", "browDown_R", "browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R",
    "cheekPuff_L", "cheekPuff_R", "cheekSquint_L", "cheekSquint_R",
    "eyeBlink_L", "eyeBlink_R", "eyeLookDown_L", "eyeLookDown_R", "eyeLookIn_L", "eyeLookIn_R",
    "eyeLookOut_L", "eyeLookOut_R", "eyeLookUp_L", "eyeLookUp_R", "eyeSquint_L", "eyeSquint_R",
    "eyeWide_L", "eyeWide_R",
    "jawForward", "jawLeft", "jawOpen", "jawRight",
    "mouthClose", "mouthDimple_L", "mouthDimple_R", "mouthFrown_L", "mouthFrown_R", "mouthFunnel",
    "mouthLeft", "mouthLowerDown_L", "mouthLowerDown_R", "mouthPress_L", "mouthPress_R", "mouthPucker",
    "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthSmile_L", "mouthSmile_R", "mouthStretch_L", "mouthStretch_R", "mouthUpperUp_L", "mouthUpperUp_R",
    "noseSneer_L", "noseSneer_R",
)

#: Panel groups: (label, name prefix) in display order; every name falls in exactly one.
GROUPS: tuple[tuple[str, str], ...] = (("Brows", "brow"), ("Eyes", "eye"), ("Jaw", "jaw"),
                                       ("Mouth", "mouth"), ("Cheeks", "cheek"), ("Nose", "nose"))


def grouped() -> list[tuple[str, list[str]]]:
    """[(group label, [names in model order])] for :data:`GROUPS`."""
    return [(label, [n for n in EXPRESSION_NAMES if n.startswith(prefix)]) for label, prefix in GROUPS]
