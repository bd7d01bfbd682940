"""One scene, end to end: ``generate_scene`` draws a room from its seed (layout, surface samples,
sensor noise, cameras) and returns a ``SyntheticScene`` (point cloud, mesh, RGB-D frames);
``scene_seed`` gives every scene of a dataset its own seed, whatever the worker count."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pretrain3d.data.labels import label_space, nyu40_to_scannet20
from pretrain3d.data.synthetic.domains import domain_spec
from pretrain3d.data.synthetic.layouts import _THEME_P, MOVABLE, THEMES, _build_layout, _move_objects, _structure
from pretrain3d.data.synthetic.materials import MaterialTable
from pretrain3d.data.synthetic.objects import SceneObject
from pretrain3d.data.synthetic.render import _camera_path, _make_raycaster, default_intrinsics, render_view
from pretrain3d.data.synthetic.surface import _mesh_from_objects, _sample_surface


# in every scene's seed (scene_seed) and generator.json (resume): changing it changes every scene
GENERATOR_VERSION = 1
# ~40-80k points for the default room-size range after hidden-surface culling.
DEFAULT_POINTS_PER_M2 = 650.0


@dataclass
class SyntheticScene:
    """A generated scene: point cloud, mesh with per-triangle attributes, RGB-D frames."""

    scene_id: str
    theme: str
    room_size: np.ndarray  # (3,) Lx, Ly, H (room spans [0, Lx] x [0, Ly], floor at z = 0)
    # point cloud
    coord: np.ndarray  # (N, 3) float32, with sensor noise
    coord_clean: np.ndarray  # (N, 3) float32, exactly on the surfaces
    normal: np.ndarray  # (N, 3) float32
    color: np.ndarray  # (N, 3) uint8, with colour noise
    label: np.ndarray  # (N,) int64 NYU40 id
    instance: np.ndarray  # (N,) int64 object index
    point_tri: np.ndarray  # (N,) int64 triangle each point was sampled on
    # mesh
    vertices: np.ndarray  # (V, 3) float32
    triangles: np.ndarray  # (T, 3) int32
    tri_normal: np.ndarray  # (T, 3) float64
    tri_label: np.ndarray  # (T,) int64 NYU40
    tri_instance: np.ndarray  # (T,) int64
    tri_material: np.ndarray  # (T,) int64
    materials: MaterialTable
    objects: list[dict]
    # frames
    K: np.ndarray  # (3, 3)
    width: int
    height: int
    poses: np.ndarray  # (F, 4, 4) camera-to-world, OpenCV axes
    frame_color: np.ndarray  # (F, H, W, 3) uint8
    frame_depth: np.ndarray  # (F, H, W) float32 metres, z-depth, 0 = no hit
    frame_label: np.ndarray  # (F, H, W) uint16 NYU40 (0 = no hit)
    frame_instance: np.ndarray  # (F, H, W) int32 (-1 = no hit)
    params: dict = field(default_factory=dict)
    _raycaster: Any = field(default=None, repr=False, compare=False)
    domain: str = "scannet"  # ``label`` holds raw ids of label_space(domain) (NYU40 for scannet)

    @property
    def segment20(self) -> np.ndarray:
        return nyu40_to_scannet20(self.label)

    @property
    def segment(self) -> np.ndarray:
        """Class indices 0..K-1 of the domain's label space (-1 = ignore)."""
        return label_space(self.domain).to_segment(self.label)

    def surface_color(self, points, tri_ids) -> np.ndarray:
        """The scene's colour function at surface points lying on triangles ``tri_ids``."""
        tri_ids = np.asarray(tri_ids, dtype=np.int64)
        return self.materials.color(points, self.tri_normal[tri_ids], self.tri_material[tri_ids])

    def raycaster(self):
        if self._raycaster is None:
            self._raycaster = _make_raycaster(self.vertices, self.triangles)
        return self._raycaster

    def render(self, K, pose_c2w, width, height, nthreads=0) -> dict:
        """Ray-cast an arbitrary view (see ``render_view``)."""
        return render_view(self, K, pose_c2w, width, height, nthreads=nthreads)

    def __getstate__(self):  # the Open3D ray caster does not pickle; rebuild it lazily
        state = self.__dict__.copy()
        state["_raycaster"] = None
        return state


def _stable_code(text: str) -> int:
    return sum((i + 1) * b for i, b in enumerate(text.encode()))  # stable, unlike hash()


def scene_seed(seed: int, split: str, index: int, domain: str = "scannet") -> np.random.SeedSequence:
    """SeedSequence of scene ``index`` of ``split``: independent of worker count/order. Another
    ``domain`` than scannet adds its own entropy word (scannet's seeds are those of version 1)."""
    words = [int(seed), _stable_code(split), int(index), GENERATOR_VERSION]
    if domain != "scannet":
        words.append(_stable_code(domain))
    return np.random.SeedSequence(words)


_RESCAN_KEY = 0x5CA7  # spawn-key element of a rescan's random streams (disjoint from scene_seed's)


def generate_scene(
    seed: int | np.random.SeedSequence = 0,
    *,
    scene_id: str = "synth",
    num_frames: int = 8,
    width: int = 160,
    height: int = 120,
    points_per_m2: float = DEFAULT_POINTS_PER_M2,
    theme: str | None = None,
    room_size: tuple[float, float, float] | None = None,
    pos_noise: float | None = None,
    color_noise: float | None = None,
    nthreads: int = 0,
    rescan: int = 0,
    moved_objects: int = 3,
    domain: str = "scannet",
) -> SyntheticScene:
    """Generate one scene; bit-identical for the same arguments.

    ``seed`` may be an int or a SeedSequence (see ``scene_seed``). ``theme`` picks the room
    type (one of ``THEMES``; random when None). ``nthreads`` is passed to Open3D's ray caster
    (0 = all cores).

    ``rescan`` k > 0 re-captures the same room (as ScanNet's ``sceneXXXX_01``, ``_02``): the layout
    comes from the same seed, but the surface sampling, the sensor noise and the camera path are
    drawn anew, and ``moved_objects`` movable objects (chairs, pillows, props, ...) are shifted by
    0.15-0.5 m and turned by up to 30 degrees (kept inside the room; they may touch a neighbour).

    ``domain`` picks the dataset imitated (see ``pretrain3d.data.synthetic.domains``): its room
    types (``theme``), recipes, label space (``label`` then holds that space's raw ids), colour
    character, sampling density (``points_per_m2`` times the domain's factor; scannet: 1) and, when
    ``pos_noise`` / ``color_noise`` are None, its sensor noise (scannet: 0.005 m, 3.0).
    """
    spec = None if domain == "scannet" else domain_spec(domain)
    pos_noise = (0.005 if spec is None else spec.pos_noise) if pos_noise is None else pos_noise
    color_noise = (3.0 if spec is None else spec.color_noise) if color_noise is None else color_noise
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
    r_layout, r_sample, r_noise, r_cam = (np.random.default_rng(s) for s in ss.spawn(4))
    if spec is None:
        if theme is None:
            theme = THEMES[int(r_layout.choice(len(THEMES), p=_THEME_P))]
        lay = _build_layout(r_layout, theme, room_size)
    else:
        theme = spec.pick_theme(r_layout) if theme is None else spec.check_theme(theme)
        lay = spec.build_layout(r_layout, theme, room_size)
    if rescan:
        rs = np.random.SeedSequence(ss.entropy, spawn_key=tuple(ss.spawn_key) + (_RESCAN_KEY, int(rescan)))
        r_sample, r_noise, r_cam, r_move = (np.random.default_rng(s) for s in rs.spawn(4))
        _move_objects(r_move, lay, moved_objects, MOVABLE if spec is None else spec.movable)
    Lx, Ly, H = lay.L
    struct = _structure(r_layout, Lx, Ly, H) if spec is None else spec.structure(r_layout, lay)
    objects: list[SceneObject] = []
    for proto in struct:
        objects.append(SceneObject(proto.cls, lay.label_ids[proto.cls], len(objects), proto.prims, proto.mats))
    for o in lay.objects:
        objects.append(SceneObject(o.cls, o.nyu40, len(objects), o.prims, o.mats))

    V, T, tri_obj, tri_mat, tri_prim, prims, mats = _mesh_from_objects(objects)
    mtab = MaterialTable.pack(mats)
    tri_label = np.array([objects[i].nyu40 for i in range(len(objects))], np.int64)[tri_obj]

    density = points_per_m2 if spec is None else points_per_m2 * spec.density_factor
    pts, tid, tri_normal, _ = _sample_surface(r_sample, V, T, tri_prim, prims, density)
    if spec is not None:
        mtab.base = spec.recolor(mtab.base)  # the domain's colour character (points and frames alike)
        keep = spec.holes(r_noise, pts, tri_label[tid])
        pts, tid = pts[keep], tid[keep]
    nrm = tri_normal[tid]
    col_clean = mtab.color(pts, nrm, tri_mat[tid])
    noisy = pts + nrm * r_noise.normal(0.0, pos_noise, size=(len(pts), 1))
    col = np.clip(np.rint(col_clean + r_noise.normal(0.0, color_noise, size=col_clean.shape)), 0, 255).astype(np.uint8)

    scene = SyntheticScene(
        scene_id=scene_id,
        theme=theme,
        room_size=lay.L.copy(),
        coord=noisy.astype(np.float32),
        coord_clean=pts.astype(np.float32),
        normal=nrm.astype(np.float32),
        color=col,
        label=tri_label[tid],
        instance=tri_obj[tid].astype(np.int64),
        point_tri=tid.astype(np.int64),
        vertices=V.astype(np.float32),
        triangles=T.astype(np.int32),
        tri_normal=tri_normal,
        tri_label=tri_label,
        tri_instance=tri_obj.astype(np.int64),
        tri_material=tri_mat.astype(np.int64),
        materials=mtab,
        objects=[
            {
                "instance": o.instance,
                "class": o.cls,
                ("nyu40" if spec is None else "label"): o.nyu40,
                "aabb": [a.round(4).tolist() for a in o.aabb()],
            }
            for o in objects
        ],
        K=default_intrinsics(width, height),
        width=width,
        height=height,
        poses=_camera_path(r_cam, lay.L, objects, num_frames),
        frame_color=np.zeros((0, height, width, 3), np.uint8),
        frame_depth=np.zeros((0, height, width), np.float32),
        frame_label=np.zeros((0, height, width), np.uint16),
        frame_instance=np.zeros((0, height, width), np.int32),
        params={
            "num_frames": num_frames,
            "width": width,
            "height": height,
            "points_per_m2": points_per_m2,
            "pos_noise": pos_noise,
            "color_noise": color_noise,
            **({} if spec is None else {"domain": domain, "density_factor": spec.density_factor}),
        },
        domain=domain,
    )
    if num_frames:
        views = [render_view(scene, scene.K, P, width, height, nthreads=nthreads) for P in scene.poses]
        scene.frame_color = np.stack([v["color"] for v in views])
        scene.frame_depth = np.stack([v["depth"] for v in views])
        scene.frame_label = np.stack([v["label"] for v in views])
        scene.frame_instance = np.stack([v["instance"] for v in views])
    return scene
