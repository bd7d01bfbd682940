"""Deterministic procedural indoor scenes with RGB-D frames, written in a ScanNet-like layout.

A scene is a room (floor + four walls, no ceiling, like a ScanNet scan) furnished with
objects built from boxes and cylinders, each labelled with an NYU40 id that maps onto the
ScanNet-20 benchmark classes (see ``pretrain3d.data.labels``), plus a few "ignore" classes
(otherprop clutter, pillows, books) so that the ``-1`` path is exercised as with real data.

Everything is a triangle mesh with per-triangle object/material/normal; from it we take
* a point cloud: area-uniform samples on the visible surfaces (samples that fall inside
  another solid -- the underside of a cabinet, the back of a picture, a chair leg's top --
  are dropped), exact normals, colours, NYU40 labels and instance ids, then sensor noise;
* RGB-D frames: Open3D ray casting from a camera path inside the room.

Colours are a deterministic function ``colour(p, n, material)`` of the 3D position ``p``
(procedural wood grain, planks, tiles, fabric speckle, "art" for pictures) times a fixed
Lambert-like term of the surface normal ``n``. The point cloud and the images evaluate the
same function, so a pixel and a point at the same 3D location agree exactly (before the
point cloud's colour noise and JPEG compression).

Randomness: one ``numpy.random.SeedSequence`` per scene, split into independent streams
for layout, surface sampling, sensor noise and cameras, so e.g. changing the number of
frames never changes the point cloud. ``generate_dataset`` seeds scene *i* of split *s*
from ``(seed, s, i)`` so results do not depend on the number of workers.

``domain`` (``scannet`` default | ``s3dis`` | ``structured3d``) chooses which dataset the rooms
imitate; the S3DIS-like and Structured3D-like recipes, label maps and colour/noise character live
in ``domains``. The generator only hooks them in: the ``scannet`` path is the original generator,
byte for byte.

The modules, from the bottom up (each imports only modules above it at run time)::

    primitives      boxes and cylinders, and their triangle meshes
    materials       procedural colour functions; MaterialTable.color, the one colour of a scene
    objects         object prototypes, placed objects, the NYU40 ids of the generator's classes
    furniture       tables, desks, chairs, sofas, beds, cabinets, bookshelves, other furniture
    fixtures        sinks, counters, fridges, toilets, bathtubs, doors, windows, pictures
    layouts         the scannet domain's rooms: recipes per room type, placement, walls and floor
    domain_objects  objects only the other domains have (boards, columns, lamps, dressers, ...)
    domains         the S3DIS-like and Structured3D-like domains (DomainSpec, domain_spec)
    surface         mesh of a room and the visible-surface point sample
    render          camera path, intrinsics, ray-cast RGB-D views
    generator       generate_scene: one seeded room -> SyntheticScene
    writer          write_raw_scene (ScanNet-like raw layout) and generate_dataset

This package's namespace re-exports the public names, so ``from pretrain3d.data.synthetic import
generate_dataset`` (and every other name the former single module had) keeps working.
"""

from __future__ import annotations

# every public name of the former single module, so that importers need not know the split
from pretrain3d.data.synthetic.fixtures import (
    build_bathtub,
    build_counter,
    build_door,
    build_picture,
    build_refrigerator,
    build_sink,
    build_toilet,
    build_window,
)
from pretrain3d.data.synthetic.furniture import (
    build_bed,
    build_bookshelf,
    build_cabinet,
    build_chair,
    build_desk,
    build_otherfurniture,
    build_sofa,
    build_table,
)
from pretrain3d.data.synthetic.generator import (
    DEFAULT_POINTS_PER_M2,
    GENERATOR_VERSION,
    SyntheticScene,
    generate_scene,
    scene_seed,
)
from pretrain3d.data.synthetic.layouts import MOVABLE, THEMES
from pretrain3d.data.synthetic.materials import Material, MaterialTable
from pretrain3d.data.synthetic.objects import NYU40, SceneObject
from pretrain3d.data.synthetic.primitives import CA, B, C, Prim
from pretrain3d.data.synthetic.render import MAX_DEPTH_M, default_intrinsics, render_view
from pretrain3d.data.synthetic.writer import generate_dataset, rescan_id, write_raw_scene

# what ``from pretrain3d.data.synthetic import *`` gives, as before the split into modules
__all__ = [
    "NYU40",
    "THEMES",
    "DEFAULT_POINTS_PER_M2",
    "SyntheticScene",
    "scene_seed",
    "generate_scene",
    "render_view",
    "write_raw_scene",
    "generate_dataset",
]
