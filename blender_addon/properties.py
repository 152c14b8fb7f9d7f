"""The add-on's properties: per avatar object (``Object.fastavatar``), per scene (``Scene.fastavatar``)
and one slider per attribute direction (``FastAvatarEdit``).

The object's properties are what survives save/reload and append besides the mesh attributes
and ID properties :mod:`.avatar` and :mod:`.editing` write; every slider and the blend's *Mix*
are keyframable and re-decode the avatar through :func:`.editing.on_parameter_changed`."""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty,
)

from . import avatar as avatar_mod
from . import editing, expressions
from .direction_library import direction_items


def _param_update(self, context):
    editing.on_parameter_changed(self.id_data)


def _expression_update(self, context):
    if not expressions.suspended():
        editing.on_parameter_changed(self.id_data)


def _expression_group():
    """The ``FastAvatarExpression`` property group: one keyframable float in [0, 1] per ARKit
    expression name (:data:`expressions.EXPRESSION_NAMES`)."""
    ann = {name: FloatProperty(name=name, default=0.0, min=0.0, max=1.0, update=_expression_update,
                               description=f"ARKit expression {name} (0: rest, 1: full; keyframable)")
           for name in expressions.EXPRESSION_NAMES}
    return type("FastAvatarExpression", (bpy.types.PropertyGroup,),
                {"__annotations__": ann, "__doc__": "The avatar's 53 expression coefficients (ARKit names)."})


FastAvatarExpression = _expression_group()


def _is_avatar_poll(self, obj):
    return avatar_mod.is_avatar(obj) and obj != self.id_data


class FastAvatarEdit(bpy.types.PropertyGroup):
    """One attribute-direction slider of an avatar (``name`` = the direction's name)."""

    amount: FloatProperty(name="Amount", default=0.0, soft_min=-2.0, soft_max=2.0, update=_param_update,
                          description="How far to move the avatar's code along this direction (code units)")


class FastAvatarObjectProps(bpy.types.PropertyGroup):
    is_avatar: BoolProperty(name="Is Avatar", default=False)
    edits: CollectionProperty(type=FastAvatarEdit)
    blend_a: PointerProperty(name="Blend A", type=bpy.types.Object, poll=_is_avatar_poll,
                             description="First input of a blended avatar (mix 0)")
    blend_b: PointerProperty(name="Blend B", type=bpy.types.Object, poll=_is_avatar_poll,
                             description="Second input of a blended avatar (mix 1)")
    mix: FloatProperty(name="Mix", default=0.5, min=0.0, max=1.0, update=_param_update,
                       description="Blend factor: 0 = Blend A, 1 = Blend B (keyframable)")
    label: EnumProperty(name="Attribute", default="NONE",
                        description="Whether this avatar has the attribute being trained (Train Direction)",
                        items=[("NONE", "Unlabelled", "Not used for training"),
                               ("HAS", "Has", "Has the attribute"), ("LACKS", "Lacks", "Lacks the attribute")])
    model_id: StringProperty(name="Model", description="Model the avatar's code belongs to")
    photo: StringProperty(name="Photo", subtype="FILE_PATH", description="Source photo")
    face_index: IntProperty(name="Face Index", default=-1)
    refined_steps: IntProperty(name="Refined Steps", default=0)
    camera_json: StringProperty(name="Camera", description="Estimated photo camera (JSON, head frame)")
    expression: PointerProperty(type=FastAvatarExpression)


#: Generate Avatar's default likeness fit, the engine's ``generate.DEFAULT_FIT_STEPS`` (the add-on
#: does not import the engine; a test checks the two agree)
FIT_STEPS_DEFAULT = 40


class FastAvatarSceneProps(bpy.types.PropertyGroup):
    photo_path: StringProperty(name="Photo", subtype="FILE_PATH", description="Face photo to turn into an avatar")
    image: PointerProperty(name="Image", type=bpy.types.Image,
                           description="Use this image datablock instead of the file path")
    face_index: IntProperty(name="Face", default=-1, min=-1, soft_max=16,
                            description="Which face when there are several (-1: the largest)")
    fit_steps: IntProperty(name="Likeness Fit", default=FIT_STEPS_DEFAULT, min=0, soft_max=300,
                           description="Steps Generate Avatar fits the avatar to the photo (hair outline, colours, "
                                       "proportions; ~10 s on a 2-core CPU). 0: the bare feed-forward avatar")
    status: StringProperty(name="Status")
    progress: FloatProperty(name="Progress", default=-1.0, description="Fraction done of the running job (-1: none)")
    refine_steps: IntProperty(name="Steps", default=300, min=1, soft_max=2000,
                              description="Refinement steps (the paper's full refinement: 300)")
    preview_every: IntProperty(name="Preview Every", default=50, min=0, soft_max=500,
                               description="Show the refining avatar every N steps (0: only at the end)")
    direction_name: StringProperty(name="Name", default="attribute",
                                   description="Name of the direction to train")
    direction: EnumProperty(name="Direction", items=lambda self, context: direction_items(context),
                            description="Direction from the library (the active avatar's model only)")
    photos_dir: StringProperty(name="Photos", subtype="DIR_PATH",
                               description="Folder of face photos to build an expression direction from")
    measure: EnumProperty(name="Measure", default="mouth_open",
                          items=[("mouth_open", "Mouth Open", "Inner-lip gap / face height, from landmarks"),
                                 ("smile", "Smile", "Mouth width / eye-corner distance, from landmarks")],
                          description="Expression computed from each photo's landmarks; photos above the "
                                      "median are labelled as having it")
    drive_source: StringProperty(name="Performance", subtype="FILE_PATH",
                                 description="A video, a folder of frames, an iPhone Live Link Face CSV or an "
                                             "expressions JSON (fastavatar track) to drive the avatar with")
    drive_same_person: BoolProperty(name="Video Shows This Person", default=False,
                                    description="Hold the avatar's own head shape while tracking (only when the "
                                                "video shows the avatar's person; otherwise the speaker's head is "
                                                "fitted from the first frames)")
    drive_pose: BoolProperty(name="Head Motion", default=True,
                             description="Also key the tracked head rotation and translation on the object")
    drive_smooth: FloatProperty(name="Smoothing", default=1.0, min=0.0, max=50.0,
                                description="Temporal smoothing, Gaussian sigma in video frames (0: off)")
