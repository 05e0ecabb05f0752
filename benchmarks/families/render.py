"""The ``render`` family: FLAME heads with a known micro-expression, rendered by Blender Cycles.

    .venv/bin/python benchmarks/families/render.py --out /work/data/microface/families --seeds 910000:910008

writes ``OUT/render/<seed>/`` (``video.<ext>`` and ``clip.npz``, ``benchmarks/families/__init__.py``);
existing clip folders are kept, so a run resumes. Each clip is rendered into a temporary sibling
folder and renamed into place when complete.

The motion and truth are the project's recipe (``backend.synthetic.synth.motion`` of
``backend.training.dataset.draw_synthetic_spec(seed)``: regions, peak, head angles, sway, off-basis bump),
but the pixels come from another image source than backend.synthetic.synth's numpy rasterizer: Cycles path
tracing (low samples, no denoiser) of the FLAME mesh with its own skin materials, an area light,
an environment light, a textured backdrop or a world background, then a codec. From a separate
stream of the seed (:func:`draw_look`) come the frame rate (25-200 fps, every frame rendered),
the onset/apex/offset (onset at frame 12-16, 0.15-0.45 s long, capped by the frames left), the
image size and the face width in pixels (150-500 px), the material (``procedural``: Principled
BSDF with subsurface, noise/voronoi albedo, roughness and bump; ``textured``: the project's
procedural UV skin texture as base colour with subsurface and a noise bump), light, background,
samples, sensor noise and codec (H.264 in .mp4 at a Blender CRF preset, MJPEG .avi via OpenCV,
FFV1 .mkv or PNG .avi, both lossless).

The backend's camera (at the origin looking down -z, +y up, +v down, pixel centres at integers)
is an unrotated Blender camera at the origin; the camera-space vertices are the world-space
vertices, and lens and shift come from ``microface_blender.scene.camera.lens_from_intrinsics``.

Seeds: held-out clips are 910000 and up (:data:`HELDOUT_SEED0`); training, if anyone trains on
this family, uses :data:`TRAIN_SEEDS`.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FAMILY = "render"
HELDOUT_SEED0 = 910000
TRAIN_SEEDS = (0, 900000)            # [lo, hi)
N_FRAMES = 48
FPS_RANGE = (25.0, 200.0)            # log-uniform, rounded to 0.01 (what the containers store)
ONSET_RANGE = (12, 16)
DURATION_S = (0.15, 0.45)            # onset -> offset, capped by the frames available
POST_FRAMES = 2                      # offset <= T - 1 - POST_FRAMES
FACE_PX = (150.0, 500.0)             # face-region width in pixels, at most FACE_FILL x the short side
FACE_FILL = 0.6
# Cycles costs 4-8 us per sample on one (shared) core here, skin with subsurface and 2 bounces: the
# sizes stay at or below 512x512 / 640x360 and the samples are capped so a frame costs about
# SAMPLE_BUDGET samples (5-15 s on this machine).
SIZES = ((384, 384), (448, 448), (512, 512), (512, 288), (640, 360))
SAMPLES = (4, 10)                    # Cycles samples per pixel drawn, uniform integer, no denoiser
SAMPLE_BUDGET = 6.0e5                # samples per frame; the drawn count is capped at this / pixels (>= 4)
H264_CRF = {"PERC_LOSSLESS": 17, "HIGH": 20, "MEDIUM": 23, "LOW": 26}  # Blender's presets -> x264 CRF
CODECS = (("h264", 0.5), ("mjpeg", 0.2), ("ffv1", 0.15), ("png", 0.15))
EXPOSURE_TARGET = 0.45               # mean face value (0..1) the exposure is set to, from frame 0
LOOK_STREAM = 0x52454E44             # "REND": the look's rng is default_rng([seed, LOOK_STREAM])


# ----------------------------------------------------------------------------- the draw

@dataclass
class RenderLook:
    """Everything this family draws for a seed beyond the recipe's motion."""

    seed: int
    fps: float
    n_frames: int
    onset: int
    apex: int
    offset: int
    width: int
    height: int
    face_px: float
    samples: int
    material: str                    # "procedural" or "textured"
    skin_tone: tuple[float, float, float]
    subsurface_weight: float
    subsurface_scale_m: float
    subsurface_method: str
    roughness: float
    bump_strength: float
    pore_scale: float                # noise/voronoi scale, per metre
    light_size_m: float
    light_shape: str
    light_azimuth_deg: float
    light_elevation_deg: float
    light_distance_m: float
    light_irradiance: float          # power / distance^2, W/m^2 before the exposure is set
    light_colour: tuple[float, float, float]
    world_kind: str                  # "colour" or "gradient"
    world_colour: tuple[float, float, float]
    world_colour2: tuple[float, float, float]
    world_strength: float
    background: str                  # "plane" or "world"
    backdrop_texture: str            # "noise", "voronoi", "wave", "checker"
    backdrop_colours: tuple[tuple[float, float, float], tuple[float, float, float]]
    backdrop_distance_m: float       # behind the face
    backdrop_scale: float
    view_transform: str              # "Standard" or "AgX"
    noise_std: float                 # 0..255 Gaussian sensor noise added to the 8-bit frames
    codec: str                       # "h264", "mjpeg", "ffv1", "png"
    crf_preset: str                  # h264 only
    crf: int                         # h264 only (0 otherwise)
    jpeg_quality: int                # mjpeg only (0 otherwise)

    @property
    def duration_s(self) -> float:
        return (self.offset - self.onset) / self.fps


def _colour(rng, lo, hi) -> tuple[float, float, float]:
    return tuple(float(x) for x in rng.uniform(lo, hi, 3))


def draw_look(seed: int, n_frames: int = N_FRAMES) -> RenderLook:
    """This family's settings for ``seed`` (np.random.default_rng([seed, LOOK_STREAM]))."""
    rng = np.random.default_rng([int(seed), LOOK_STREAM])
    fps = round(float(np.exp(rng.uniform(*np.log(FPS_RANGE)))), 2)
    onset = int(rng.integers(ONSET_RANGE[0], ONSET_RANGE[1] + 1))
    onset = min(onset, max(1, n_frames // 3))
    max_span = n_frames - 1 - POST_FRAMES - onset
    if max_span < 2:
        raise ValueError(f"{n_frames} frames are too few for an onset at {onset}")
    span = int(np.clip(round(rng.uniform(*DURATION_S) * fps), 2, max_span))
    apex = onset + int(np.clip(round(rng.uniform(0.3, 0.6) * span), 1, span - 1))
    offset = onset + span
    width, height = SIZES[int(rng.integers(len(SIZES)))]
    face_hi = min(FACE_PX[1], FACE_FILL * min(width, height))
    face_px = float(rng.uniform(FACE_PX[0], face_hi))
    material = "procedural" if rng.random() < 0.5 else "textured"
    tones = np.array([[0.93, 0.76, 0.66], [0.85, 0.66, 0.54], [0.72, 0.52, 0.40], [0.55, 0.38, 0.28]])
    u = rng.uniform(0, len(tones) - 1)
    i = min(int(u), len(tones) - 2)
    tone = tones[i] * (1 - (u - i)) + tones[i + 1] * (u - i)
    codec_names, p = zip(*CODECS)
    codec = str(rng.choice(codec_names, p=np.array(p) / sum(p)))
    crf_preset = str(rng.choice(list(H264_CRF))) if codec == "h264" else ""
    world_kind = "colour" if rng.random() < 0.5 else "gradient"
    return RenderLook(
        seed=int(seed), fps=fps, n_frames=int(n_frames), onset=onset, apex=apex, offset=offset,
        width=width, height=height, face_px=face_px,
        samples=int(min(rng.integers(SAMPLES[0], SAMPLES[1] + 1), max(SAMPLES[0], SAMPLE_BUDGET // (width * height)))),
        material=material, skin_tone=tuple(float(x) for x in tone * rng.uniform(0.96, 1.04, 3)),
        subsurface_weight=float(rng.uniform(0.3, 1.0)), subsurface_scale_m=float(rng.uniform(0.002, 0.006)),
        subsurface_method=str(rng.choice(["BURLEY", "BURLEY", "RANDOM_WALK"])), roughness=float(rng.uniform(0.35, 0.6)),
        bump_strength=float(rng.uniform(0.05, 0.25)), pore_scale=float(rng.uniform(250.0, 600.0)),
        light_size_m=float(rng.uniform(0.1, 0.8)), light_shape=str(rng.choice(["SQUARE", "DISK", "RECTANGLE"])),
        light_azimuth_deg=float(rng.uniform(-50, 50)), light_elevation_deg=float(rng.uniform(0, 50)),
        light_distance_m=float(rng.uniform(0.5, 1.5)), light_irradiance=float(rng.uniform(20.0, 60.0)),
        light_colour=_colour(rng, 0.85, 1.0), world_kind=world_kind, world_colour=_colour(rng, 0.2, 1.0),
        world_colour2=_colour(rng, 0.05, 0.6), world_strength=float(rng.uniform(0.05, 0.4)),
        background="plane" if rng.random() < 0.6 else "world",
        backdrop_texture=str(rng.choice(["noise", "voronoi", "wave", "checker"])),
        backdrop_colours=(_colour(rng, 0.05, 0.9), _colour(rng, 0.05, 0.9)),
        backdrop_distance_m=float(rng.uniform(0.3, 1.0)), backdrop_scale=float(rng.uniform(2.0, 20.0)),
        view_transform="Standard" if rng.random() < 0.6 else "AgX", noise_std=float(rng.uniform(0.0, 3.0)),
        codec=codec, crf_preset=crf_preset, crf=H264_CRF.get(crf_preset, 0),
        jpeg_quality=int(rng.integers(75, 96)) if codec == "mjpeg" else 0)


def recipe_motion(seed: int, look: RenderLook, model):
    """The recipe's motion of ``seed`` at the look's rate, frames and timing: (SynthMotion, peak_mm used).

    As ``backend.training.dataset._render``: a peak the named model cannot reach with weights <= 1 is
    lowered x0.75 until it can."""
    from backend.training.dataset import draw_synthetic_spec, with_reachable_peak
    from backend.synthetic.synth import motion

    spec = dataclasses.replace(draw_synthetic_spec(seed), capture_fps=look.fps, stride=1, n_frames=look.n_frames,
                               onset=look.onset, apex=look.apex, offset=look.offset, width=look.width,
                               height=look.height)
    return with_reachable_peak(spec, lambda s: motion(s.synth_config(), model))


def face_intrinsics(vertices_cam0: np.ndarray, model, width: int, height: int, face_px: float) -> np.ndarray:
    """(3,) f, cx, cy with the principal point at the image centre and f such that the face regions'
    vertices of ``vertices_cam0`` (V, 3) span ``face_px`` pixels across."""
    from backend.head.camera import default_intrinsics, project_np

    face = vertices_cam0[model.region_labels >= 0]
    uv = project_np(face, np.array([1.0, 0.0, 0.0]))
    return default_intrinsics(width, height, focal=face_px / float(np.ptp(uv[:, 0])))


# ----------------------------------------------------------------------------- the Blender scene

def _nodes(tree):
    return tree.nodes, tree.links


def _material(name: str, created: list):
    """A new node material (recorded in ``created``) and its nodes, links and Principled BSDF."""
    import bpy

    mat = bpy.data.materials.new(name)
    created.append(mat)
    nodes, links = _nodes(mat.node_tree)
    return mat, nodes, links, nodes["Principled BSDF"]


def _image(name: str, rgb: np.ndarray, created: list):
    """A packed 8-bit sRGB Blender image from (H, W, 3) 0..1 RGB with row 0 at the top."""
    import bpy

    h, w = rgb.shape[:2]
    img = bpy.data.images.new(name, w, h, alpha=False)
    created.append(img)
    rgba = np.concatenate([np.clip(rgb, 0, 1), np.ones((h, w, 1))], 2)[::-1].astype(np.float32)
    img.pixels.foreach_set(rgba.reshape(-1))
    img.pack()
    return img


def _skin_material(look: RenderLook, texture: np.ndarray, created: list):
    """The head's skin: procedural nodes or the UV texture, Principled BSDF with subsurface and bump."""
    mat, nodes, links, bsdf = _material(f"render_skin_{look.seed}", created)
    bsdf.subsurface_method = look.subsurface_method
    bsdf.inputs["Subsurface Weight"].default_value = look.subsurface_weight
    bsdf.inputs["Subsurface Radius"].default_value = (1.0, 0.35, 0.2)
    bsdf.inputs["Subsurface Scale"].default_value = look.subsurface_scale_m
    bsdf.inputs["Specular IOR Level"].default_value = 0.5
    coords = nodes.new("ShaderNodeTexCoord")
    pores = nodes.new("ShaderNodeTexVoronoi")
    pores.inputs["Scale"].default_value = look.pore_scale
    links.new(coords.outputs["Object"], pores.inputs["Vector"])
    fine = nodes.new("ShaderNodeTexNoise")
    fine.inputs["Scale"].default_value = look.pore_scale / 3
    fine.inputs["Detail"].default_value = 2.0
    links.new(coords.outputs["Object"], fine.inputs["Vector"])
    bump_in = nodes.new("ShaderNodeMath")
    bump_in.operation = 'MULTIPLY_ADD'
    links.new(pores.outputs["Distance"], bump_in.inputs[0])
    bump_in.inputs[1].default_value = 0.7
    links.new(fine.outputs["Fac"], bump_in.inputs[2])
    bump = nodes.new("ShaderNodeBump")
    bump.inputs["Strength"].default_value = look.bump_strength
    bump.inputs["Distance"].default_value = 0.0005
    links.new(bump_in.outputs[0], bump.inputs["Height"])
    links.new(bump.outputs["Normal"], bsdf.inputs["Normal"])
    rough = nodes.new("ShaderNodeMapRange")
    links.new(fine.outputs["Fac"], rough.inputs["Value"])
    rough.inputs["To Min"].default_value = look.roughness - 0.12
    rough.inputs["To Max"].default_value = look.roughness + 0.12
    links.new(rough.outputs["Result"], bsdf.inputs["Roughness"])

    uv_map = nodes.new("ShaderNodeUVMap")
    tex = nodes.new("ShaderNodeTexImage")
    links.new(uv_map.outputs["UV"], tex.inputs["Vector"])
    if look.material == "textured":
        tex.image = _image(f"render_tex_{look.seed}", texture, created)
        links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
        return mat
    # Procedural albedo: blotches (low-frequency noise through a tone ramp) and pores (voronoi),
    # times the texture's features (lips, brows, lids, iris) relative to its own skin tone, so the
    # face keeps its landmarks but the skin's look is the nodes'.
    import cv2

    small = cv2.resize(texture, (256, 256), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 1.0)
    base = np.median(small.reshape(-1, 3), 0)
    features = np.clip(small / np.maximum(base, 1e-3), 0, 1.25) / 1.25
    tex.image = _image(f"render_features_{look.seed}", features, created)
    blotch = nodes.new("ShaderNodeTexNoise")
    blotch.inputs["Scale"].default_value = 25.0
    blotch.inputs["Detail"].default_value = 3.0
    links.new(coords.outputs["Object"], blotch.inputs["Vector"])
    ramp = nodes.new("ShaderNodeValToRGB")
    tone = np.array(look.skin_tone)
    ramp.color_ramp.elements[0].position = 0.3
    ramp.color_ramp.elements[0].color = (*(tone * np.array([0.92, 0.86, 0.86])), 1.0)
    ramp.color_ramp.elements[1].position = 0.7
    ramp.color_ramp.elements[1].color = (*(tone * np.array([1.04, 1.03, 1.03])).clip(0, 1), 1.0)
    links.new(blotch.outputs["Fac"], ramp.inputs["Fac"])
    pore_dark = nodes.new("ShaderNodeMapRange")
    links.new(pores.outputs["Distance"], pore_dark.inputs["Value"])
    pore_dark.inputs["From Max"].default_value = 0.3
    pore_dark.inputs["To Min"].default_value = 0.88
    pore_dark.inputs["To Max"].default_value = 1.0
    mix1 = nodes.new("ShaderNodeMix")
    mix1.data_type = 'RGBA'
    mix1.blend_type = 'MULTIPLY'
    mix1.inputs["Factor"].default_value = 1.0
    links.new(ramp.outputs["Color"], mix1.inputs[6])
    links.new(pore_dark.outputs["Result"], mix1.inputs[7])
    mix2 = nodes.new("ShaderNodeMix")
    mix2.data_type = 'RGBA'
    mix2.blend_type = 'MULTIPLY'
    mix2.inputs["Factor"].default_value = 1.0
    links.new(mix1.outputs[2], mix2.inputs[6])
    gain = nodes.new("ShaderNodeMix")       # features were scaled by 1/1.25 to fit 0..1: scale back
    gain.data_type = 'RGBA'
    gain.blend_type = 'MULTIPLY'
    gain.inputs["Factor"].default_value = 1.0
    links.new(tex.outputs["Color"], gain.inputs[6])
    gain.inputs[7].default_value = (1.25, 1.25, 1.25, 1.0)
    links.new(gain.outputs[2], mix2.inputs[7])
    links.new(mix2.outputs[2], bsdf.inputs["Base Color"])
    return mat


def _eye_material(look: RenderLook, texture: np.ndarray, created: list):
    """The eyeballs: the texture's sclera, iris and pupil, glossy and without subsurface."""
    import bpy

    mat, nodes, links, bsdf = _material(f"render_eye_{look.seed}", created)
    bsdf.inputs["Roughness"].default_value = 0.08
    bsdf.inputs["Coat Weight"].default_value = 0.5
    uv_map = nodes.new("ShaderNodeUVMap")
    tex = nodes.new("ShaderNodeTexImage")
    images = [d for d in created if isinstance(d, bpy.types.Image) and d.name.startswith("render_tex_")]
    tex.image = images[0] if images else _image(f"render_tex_{look.seed}", texture, created)
    links.new(uv_map.outputs["UV"], tex.inputs["Vector"])
    links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def _world(look: RenderLook, created: list):
    import bpy

    world = bpy.data.worlds.new(f"render_world_{look.seed}")
    created.append(world)
    nodes, links = _nodes(world.node_tree)
    bg = nodes["Background"]
    bg.inputs["Strength"].default_value = look.world_strength
    if look.world_kind == "colour":
        bg.inputs["Color"].default_value = (*look.world_colour, 1.0)
        return world
    coords = nodes.new("ShaderNodeTexCoord")
    sep = nodes.new("ShaderNodeSeparateXYZ")
    links.new(coords.outputs["Generated"], sep.inputs["Vector"])
    ramp = nodes.new("ShaderNodeMapRange")
    links.new(sep.outputs["Y"], ramp.inputs["Value"])       # +y is up in this world
    ramp.inputs["From Min"].default_value = -1.0
    mix = nodes.new("ShaderNodeMix")
    mix.data_type = 'RGBA'
    links.new(ramp.outputs["Result"], mix.inputs["Factor"])
    mix.inputs[6].default_value = (*look.world_colour2, 1.0)
    mix.inputs[7].default_value = (*look.world_colour, 1.0)
    links.new(mix.outputs[2], bg.inputs["Color"])
    return world


def _backdrop(look: RenderLook, depth: float, intrinsics, collection, created: list):
    """A textured plane facing the camera at ``depth`` metres, larger than the view there."""
    import bpy

    f = float(intrinsics[0])
    half = 0.75 * depth * max(look.width, look.height) / f
    mesh = bpy.data.meshes.new(f"render_backdrop_{look.seed}")
    created.append(mesh)
    mesh.from_pydata([(-half, -half, -depth), (half, -half, -depth), (half, half, -depth), (-half, half, -depth)],
                     [], [(0, 1, 2, 3)])
    obj = bpy.data.objects.new(mesh.name, mesh)
    created.append(obj)
    collection.objects.link(obj)
    mat, nodes, links, bsdf = _material(mesh.name, created)
    bsdf.inputs["Roughness"].default_value = 0.7
    coords = nodes.new("ShaderNodeTexCoord")
    kind = {"noise": "ShaderNodeTexNoise", "voronoi": "ShaderNodeTexVoronoi", "wave": "ShaderNodeTexWave",
            "checker": "ShaderNodeTexChecker"}[look.backdrop_texture]
    tex = nodes.new(kind)
    tex.inputs["Scale"].default_value = look.backdrop_scale
    links.new(coords.outputs["Object"], tex.inputs["Vector"])
    mix = nodes.new("ShaderNodeMix")
    mix.data_type = 'RGBA'
    links.new(tex.outputs["Fac"] if "Fac" in tex.outputs else tex.outputs["Distance"], mix.inputs["Factor"])
    mix.inputs[6].default_value = (*look.backdrop_colours[0], 1.0)
    mix.inputs[7].default_value = (*look.backdrop_colours[1], 1.0)
    links.new(mix.outputs[2], bsdf.inputs["Base Color"])
    mesh.materials.append(mat)
    return obj


def _area_light(look: RenderLook, target: np.ndarray, collection, created: list):
    import bpy
    from mathutils import Vector

    az, el = math.radians(look.light_azimuth_deg), math.radians(look.light_elevation_deg)
    direction = np.array([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)])
    light = bpy.data.lights.new(f"render_light_{look.seed}", type='AREA')
    created.append(light)
    light.shape = look.light_shape
    light.size = look.light_size_m
    light.size_y = look.light_size_m * 0.6
    light.energy = look.light_irradiance * look.light_distance_m ** 2
    light.color = look.light_colour
    obj = bpy.data.objects.new(light.name, light)
    created.append(obj)
    collection.objects.link(obj)
    obj.location = Vector(target + look.light_distance_m * direction)
    obj.rotation_mode = 'QUATERNION'
    obj.rotation_quaternion = Vector(-direction).to_track_quat('-Z', 'Y')
    return obj


@dataclass
class CyclesScene:
    """A scene made by :func:`build_scene`; :meth:`remove` deletes every datablock it made."""

    scene: object
    mesh: object
    created: list

    def set_vertices(self, verts: np.ndarray) -> None:
        self.mesh.vertices.foreach_set("co", np.asarray(verts, np.float32).reshape(-1))
        self.mesh.update()

    def render(self, path: Path, frame: int) -> np.ndarray:
        """Render to ``path`` (PNG, RGBA 8 bit) and return it as (H, W, 4) uint8 RGBA."""
        import bpy
        import cv2

        self.scene.cycles.seed = int(frame)
        self.scene.render.filepath = str(path)
        bpy.ops.render.render(write_still=True, scene=self.scene.name)
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise OSError(f"Cycles wrote no image at {path}")
        return np.ascontiguousarray(img[..., [2, 1, 0, 3]])

    def remove(self) -> None:
        import bpy

        for block in reversed(self.created):
            try:
                collection = {bpy.types.Object: bpy.data.objects, bpy.types.Mesh: bpy.data.meshes,
                              bpy.types.Material: bpy.data.materials, bpy.types.Image: bpy.data.images,
                              bpy.types.World: bpy.data.worlds, bpy.types.Scene: bpy.data.scenes,
                              bpy.types.Camera: bpy.data.cameras}
                kind = next((c for t, c in collection.items() if isinstance(block, t)), bpy.data.lights)
                kind.remove(block)
            except ReferenceError:
                pass
        self.created.clear()


def build_scene(look: RenderLook, model, vertices_cam0: np.ndarray, neutral: np.ndarray, intrinsics: np.ndarray,
                texture_rng: np.random.Generator, transparent: bool = False, texture_size: int = 1024) -> CyclesScene:
    """A Cycles scene of the head at ``vertices_cam0`` (camera space = world space) seen through
    ``intrinsics`` at the look's size. ``transparent``: no backdrop and a transparent film (alpha
    = the head's silhouette)."""
    import bpy

    from backend.synthetic.synth import _template_face_uvs
    from backend.synthetic.texture import procedural_skin_texture
    from microface_blender.scene.camera import lens_from_intrinsics

    created: list = []
    scene = bpy.data.scenes.new(f"render_{look.seed}")
    created.append(scene)
    r = scene.render
    r.engine = 'CYCLES'
    r.resolution_x, r.resolution_y, r.resolution_percentage = look.width, look.height, 100
    r.threads_mode = 'FIXED'
    r.threads = 1
    r.film_transparent = transparent
    r.use_file_extension = False
    r.image_settings.file_format = 'PNG'
    r.image_settings.color_mode = 'RGBA'
    r.image_settings.color_depth = '8'
    r.image_settings.compression = 15
    c = scene.cycles
    c.device = 'CPU'
    c.samples = look.samples
    c.use_adaptive_sampling = False
    c.use_denoising = False
    c.max_bounces, c.diffuse_bounces, c.glossy_bounces = 2, 1, 1
    c.transmission_bounces, c.volume_bounces, c.transparent_max_bounces = 0, 0, 4
    c.caustics_reflective = c.caustics_refractive = False
    scene.view_settings.view_transform = look.view_transform
    scene.view_settings.look = 'None'
    collection = scene.collection

    cam = bpy.data.cameras.new(f"render_camera_{look.seed}")
    created.append(cam)
    for key, value in lens_from_intrinsics(intrinsics, (look.width, look.height)).items():
        setattr(cam, key, value)
    cam.clip_start, cam.clip_end = 0.01, 100.0
    cam_obj = bpy.data.objects.new(cam.name, cam)
    created.append(cam_obj)
    collection.objects.link(cam_obj)
    scene.camera = cam_obj            # at the origin, unrotated: looks down -z with +y up

    mesh = bpy.data.meshes.new(f"render_head_{look.seed}")
    created.append(mesh)
    mesh.from_pydata(np.asarray(vertices_cam0, np.float64).tolist(), [], model.faces.tolist())
    face_uvs = _template_face_uvs(model)
    uv = mesh.uv_layers.new(name="UVMap")
    uv.data.foreach_set("uv", face_uvs.astype(np.float32).reshape(-1))
    mesh.polygons.foreach_set("use_smooth", np.ones(len(mesh.polygons), bool))
    eyes = model.eyeball_mask()[model.faces].all(1)
    mesh.polygons.foreach_set("material_index", eyes.astype(np.int32))
    texture = procedural_skin_texture(model, neutral, face_uvs, texture_size, texture_rng)
    mesh.materials.append(_skin_material(look, texture, created))
    mesh.materials.append(_eye_material(look, texture, created))
    mesh.update()
    head = bpy.data.objects.new(mesh.name, mesh)
    created.append(head)
    collection.objects.link(head)

    face_centre = vertices_cam0[model.region_labels >= 0].mean(0)
    scene.world = _world(look, created)
    if look.background == "plane" and not transparent:
        _backdrop(look, -face_centre[2] + look.backdrop_distance_m, intrinsics, collection, created)
    _area_light(look, face_centre, collection, created)
    return CyclesScene(scene=scene, mesh=mesh, created=created)


# ----------------------------------------------------------------------------- encoding

def _encode_blender(frames_dir: Path, n: int, width: int, height: int, fps: float, out: Path, look: RenderLook) -> None:
    """Encode ``frames_dir/f_%04d.png`` with Blender's FFmpeg output through a sequencer scene."""
    import bpy

    sc = bpy.data.scenes.new(f"render_encode_{look.seed}")
    try:
        r = sc.render
        r.resolution_x, r.resolution_y, r.resolution_percentage = width, height, 100
        r.fps, r.fps_base = (int(fps), 1.0) if float(fps).is_integer() else (int(round(fps * 100)), 100.0)
        r.threads_mode = 'FIXED'
        r.threads = 1
        sc.view_settings.view_transform = 'Standard'   # pass the PNGs' values through unchanged
        sc.view_settings.look = 'None'
        sed = sc.sequence_editor_create()
        strip = sed.strips.new_image("frames", str(frames_dir / "f_0000.png"), 1, 1)
        for i in range(1, n):
            strip.elements.append(f"f_{i:04d}.png")
        sc.frame_start, sc.frame_end = 1, n
        im = r.image_settings
        im.media_type = 'VIDEO'
        im.file_format = 'FFMPEG'
        ff = r.ffmpeg
        ff.format, ff.codec = {"h264": ("MPEG4", "H264"), "ffv1": ("MKV", "FFV1"), "png": ("AVI", "PNG")}[look.codec]
        if look.codec == "h264":
            ff.constant_rate_factor = look.crf_preset
            ff.ffmpeg_preset = 'GOOD'
        r.filepath = str(out)
        r.use_file_extension = False
        bpy.ops.render.render(animation=True, scene=sc.name)
    finally:
        bpy.data.scenes.remove(sc)


def encode(frames: np.ndarray, frames_dir: Path, fps: float, out_dir: Path, look: RenderLook) -> str:
    """Write (T, H, W, 3) uint8 RGB ``frames`` as the look's codec into ``out_dir``; returns the file name.
    ``frames_dir`` holds them as ``f_%04d.png`` already (the Blender codecs read those)."""
    import cv2

    from backend.synthetic.synth import container_fps

    t, h, w = frames.shape[:3]
    if look.codec == "mjpeg":
        name = "video.avi"
        writer = cv2.VideoWriter(str(out_dir / name), cv2.VideoWriter_fourcc(*"MJPG"), container_fps(fps), (w, h))
        if not writer.isOpened():
            raise OSError("OpenCV cannot write MJPG")
        writer.set(cv2.VIDEOWRITER_PROP_QUALITY, look.jpeg_quality)
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))
        writer.release()
        return name
    name = {"h264": "video.mp4", "ffv1": "video.mkv", "png": "video.avi"}[look.codec]
    _encode_blender(frames_dir, t, w, h, fps, out_dir / name, look)
    return name


# ----------------------------------------------------------------------------- one clip

def render_frames(look: RenderLook, model, verts: np.ndarray, neutral: np.ndarray, intrinsics: np.ndarray,
                  frames_dir: Path, texture_rng: np.random.Generator, transparent: bool = False,
                  auto_exposure: bool = True, log=None) -> tuple[np.ndarray, dict]:
    """Render every frame of ``verts`` (T, V, 3) camera space with Cycles, add sensor noise and
    write them as ``frames_dir/f_%04d.png``. Returns ((T, H, W, 4) uint8 RGBA, info)."""
    import cv2

    from backend.head.render import rasterize
    from backend.head.camera import project_np

    frames_dir.mkdir(parents=True, exist_ok=True)
    cs = build_scene(look, model, verts[0], neutral, intrinsics, texture_rng, transparent=transparent)
    info: dict = {}
    try:
        exposure = 0.0
        if auto_exposure:
            # One frame-0 render sets the exposure so the lit face has a plausible mean value.
            tri = model.faces[(model.region_labels[model.faces] >= 0).all(1)]
            px = project_np(verts[0], intrinsics)
            face_idx, _, _ = rasterize(px[tri], -verts[0][tri][..., 2], look.width, look.height)
            mask = face_idx >= 0
            cs.set_vertices(verts[0])
            probe = cs.render(frames_dir / "probe.png", 0)
            mean = float(probe[..., :3][mask].mean() / 255.0) if mask.any() else EXPOSURE_TARGET
            # Display values are roughly linear^(1/2.2): a factor k in light is k^(1/2.2) in value.
            exposure = float(np.clip(2.2 * math.log2(EXPOSURE_TARGET / max(mean, 0.02)), -4, 4))
            cs.scene.view_settings.exposure = exposure
            info["probe_face_mean"] = round(mean, 3)
            (frames_dir / "probe.png").unlink()
        info["exposure"] = round(exposure, 3)
        noise = np.random.default_rng([look.seed, LOOK_STREAM, 1])
        out = np.empty((len(verts), look.height, look.width, 4), np.uint8)
        seconds = []
        for t in range(len(verts)):
            t0 = time.perf_counter()
            cs.set_vertices(verts[t])
            path = frames_dir / f"f_{t:04d}.png"
            img = cs.render(path, t)
            seconds.append(time.perf_counter() - t0)
            if look.noise_std > 0:
                rgb = img[..., :3] + noise.normal(0.0, look.noise_std, img[..., :3].shape)
                img[..., :3] = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
            cv2.imwrite(str(path), np.ascontiguousarray(img[..., [2, 1, 0]]))
            out[t] = img
            if log and (t % 12 == 0 or t == len(verts) - 1):
                log(f"  frame {t + 1}/{len(verts)}: {seconds[-1]:.2f} s")
        info["seconds_per_frame"] = round(float(np.mean(seconds)), 3)
    finally:
        cs.remove()
    return out, info


def make_clip(seed: int, model, out_root: Path, n_frames: int = N_FRAMES, look: RenderLook | None = None,
              log=print) -> Path | None:
    """Render seed ``seed`` into ``out_root/render/<seed>/`` (skipped, returning None, when it exists)."""
    from backend.synthetic.synth import container_fps
    from backend.capture.video import read_clip
    from benchmarks.families import FamilyClip, new_clip_folder, save_clip

    final = Path(out_root) / FAMILY / str(seed)
    if (final / "clip.npz").exists():
        return None
    look = look or draw_look(seed, n_frames)
    t0 = time.perf_counter()
    m, peak = recipe_motion(seed, look, model)
    intrinsics = face_intrinsics(m.vertices[0], model, look.width, look.height, look.face_px)
    with new_clip_folder(final) as tmp:
        texture_rng = np.random.default_rng([int(seed), 5])   # synth's texture stream of the seed
        frames, render_info = render_frames(look, model, m.vertices, m.neutral, intrinsics, tmp / "frames",
                                            texture_rng, log=log)
        t_enc = time.perf_counter()
        video = encode(frames[..., :3], tmp / "frames", look.fps, tmp, look)
        t_enc = time.perf_counter() - t_enc
        decoded = read_clip(tmp / video)
        if len(decoded.frames) != look.n_frames:
            raise RuntimeError(f"{video} decodes to {len(decoded.frames)} frames, not {look.n_frames}")
        if abs(decoded.fps - container_fps(look.fps)) > 0.01:
            raise RuntimeError(f"{video} decodes at {decoded.fps} fps, not {look.fps}")
        err = np.abs(decoded.frames.astype(np.int16) - frames[..., :3].astype(np.int16))
        shutil.rmtree(tmp / "frames")
        face_px = float(np.ptp(m.vertices[0][model.region_labels >= 0][:, 0] / -m.vertices[0][model.region_labels >= 0][:, 2])
                        * intrinsics[0])
        info = {"seed": int(seed), "renderer": "cycles", "blender": _blender_version(), "samples": look.samples,
                "material": look.material, "codec": look.codec, "crf": look.crf or None,
                "crf_preset": look.crf_preset or None, "jpeg_quality": look.jpeg_quality or None,
                "size": [look.width, look.height], "face_width_px": round(face_px, 1), "fps": look.fps,
                "frames": look.n_frames, "duration_s": round(look.duration_s, 4),
                "light": {"azimuth_deg": look.light_azimuth_deg, "elevation_deg": look.light_elevation_deg,
                          "distance_m": look.light_distance_m, "size_m": look.light_size_m,
                          "shape": look.light_shape, "irradiance": look.light_irradiance},
                "world": look.world_kind, "background": look.background, "view_transform": look.view_transform,
                "noise_std": look.noise_std, "codec_error_mean": round(float(err.mean()), 3),
                "requested_regions": list(m.requested_regions), "look": dataclasses.asdict(look),
                **render_info, "seconds_encode": round(t_enc, 2),
                "seconds": round(time.perf_counter() - t0, 1)}
        save_clip(FamilyClip(
            folder=tmp, video=video, fps=look.fps, focal=float(intrinsics[0]), onset=m.onset, apex=m.apex,
            offset=m.offset, motion_head=m.vertices_head - m.vertices_head[:1], vertices_cam=m.vertices,
            intrinsics=intrinsics, profile=m.profile, active_regions=list(m.active_regions), peak_mm=peak,
            info=info, params={"shape": m.shape, "expr": m.expr, "pose": m.pose, "trans": m.trans}))
    return final


def _blender_version() -> str:
    import bpy

    return bpy.app.version_string


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/work/data/microface/families")
    ap.add_argument("--seeds", default=f"{HELDOUT_SEED0}:{HELDOUT_SEED0 + 8}", help="LO:HI")
    ap.add_argument("--frames", type=int, default=N_FRAMES)
    args = ap.parse_args(argv)
    from backend.head.flame import load_flame

    model = load_flame()
    lo, hi = (int(x) for x in args.seeds.split(":"))
    for seed in range(lo, hi):
        t = time.perf_counter()
        look = draw_look(seed, args.frames)
        print(f"seed {seed}: {look.width}x{look.height} {look.fps} fps, {look.material}, {look.codec}, "
              f"{look.samples} samples, face {look.face_px:.0f} px", flush=True)
        path = make_clip(seed, model, Path(args.out), args.frames, look=look,
                         log=lambda s: print(s, flush=True))
        print(f"seed {seed}: {'exists' if path is None else path} ({time.perf_counter() - t:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
