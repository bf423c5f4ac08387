"""Point-cloud utilities (difftop/envs/pointcloud.py): back-projection against hand-computed cases and
a rendered MuJoCo scene, the workspace crop, farthest-point sampling."""

from __future__ import annotations

import os

import numpy as np
import pytest

from difftop.envs.pointcloud import crop_points, depth_to_points, farthest_point_sample
from difftop.errors import UserError

os.environ.setdefault("MUJOCO_GL", "egl")


def test_depth_to_points_hand_computed_camera_looking_down():
    # fovy 90 on a 2-row image: focal length 1 pixel, pixel centres at +-0.5. A camera 2 m above
    # the origin with MuJoCo's identity frame looks straight down (along -z); depth 2 is the floor.
    pts = depth_to_points(np.full((2, 2), 2.0), 90.0, [0.0, 0.0, 2.0], np.eye(3))
    want = [[-1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, -1.0, 0.0], [1.0, -1.0, 0.0]]  # row 0 = image top
    np.testing.assert_allclose(pts, want, atol=1e-12)


def test_depth_to_points_uses_the_camera_pose():
    # camera at (1, 2, 3) looking along world +x: its right (x) is world -y, its up (y) is world +z,
    # its z axis (it looks along -z) is world -x. Columns of xmat are the camera axes in the world.
    xmat = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    depth = np.array([[1.0, 3.0]])  # one row: h = 1, f = 0.5 / tan(30 deg)
    pts = depth_to_points(depth, 60.0, [1.0, 2.0, 3.0], xmat)
    f = 0.5 / np.tan(np.deg2rad(30.0))
    # pixel (0, 0): u = -0.5 / f, v = 0; pixel (0, 1): u = +0.5 / f
    want = [[1.0 + 1.0, 2.0 + 0.5 / f * 1.0, 3.0], [1.0 + 3.0, 2.0 - 0.5 / f * 3.0, 3.0]]
    np.testing.assert_allclose(pts, want, atol=1e-12)


def test_depth_to_points_rejects_bad_input():
    with pytest.raises(UserError, match="depth must be an"):
        depth_to_points(np.ones(4), 45.0, np.zeros(3), np.eye(3))
    with pytest.raises(UserError, match="fovy_deg"):
        depth_to_points(np.ones((2, 2)), 180.0, np.zeros(3), np.eye(3))


def test_crop_keeps_the_box_and_extra_columns_and_drops_nan():
    pts = np.array([[0.0, 0.0, 0.0, 7.0], [2.0, 0.0, 0.0, 8.0], [np.nan, 0.0, 0.0, 9.0],
                    [1.0, 1.0, 1.0, 5.0]])
    out = crop_points(pts, [-1, -1, -1], [1, 1, 1])
    np.testing.assert_array_equal(out, pts[[0, 3]])
    with pytest.raises(UserError, match="3 values"):
        crop_points(pts, [0, 0], [1, 1])


def _brute_fps(x: np.ndarray, n: int, first: int) -> list[int]:
    idx = [first]
    for _ in range(n - 1):
        d = np.min(((x[:, None] - x[idx][None]) ** 2).sum(-1), axis=1)
        idx.append(int(np.argmax(d)))
    return idx


def test_farthest_point_sample_matches_the_definition_and_is_seeded():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 6))  # xyz + 3 colour columns, which must not count
    idx = farthest_point_sample(x, 40, seed=3)
    assert idx.shape == (40,) and len(set(idx.tolist())) == 40
    assert idx.tolist() == _brute_fps(x[:, :3], 40, int(idx[0]))
    np.testing.assert_array_equal(idx, farthest_point_sample(x, 40, seed=3))


def test_farthest_point_sample_pads_small_clouds_and_rejects_bad_input():
    idx = farthest_point_sample(np.zeros((5, 3)), 8, seed=0)
    assert idx.shape == (8,) and set(idx.tolist()) == set(range(5))
    with pytest.raises(UserError, match="non-empty"):
        farthest_point_sample(np.zeros((0, 3)), 4)
    with pytest.raises(UserError, match=">= 1"):
        farthest_point_sample(np.zeros((4, 3)), 0)


SCENE = """
<mujoco>
  <visual><quality shadowsize="0" offsamples="0"/></visual>
  <worldbody>
    <geom type="plane" size="2 2 0.1"/>
    <geom name="box" type="box" pos="0.3 -0.2 0.1" size="0.1 0.05 0.1"/>
    <camera name="cam" pos="1.2 0.8 1.0" xyaxes="-0.6 0.8 0 -0.4 -0.3 0.866" fovy="50"/>
  </worldbody>
</mujoco>
"""


def test_rendered_depth_lands_a_known_box_at_its_known_position():
    mujoco = pytest.importorskip("mujoco")
    model = mujoco.MjModel.from_xml_string(SCENE)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    try:
        r = mujoco.Renderer(model, 96, 96)
    except Exception as e:  # no OpenGL backend on this machine
        pytest.skip(f"no MuJoCo rendering: {e}")
    try:
        r.enable_depth_rendering()
        r.update_scene(data, camera="cam")
        depth = r.render().copy()
    finally:
        r.close()
    cam = model.camera("cam").id
    pts = depth_to_points(depth, model.cam_fovy[cam], data.cam_xpos[cam], data.cam_xmat[cam])
    floor = np.abs(pts[:, 2]) < 2e-3
    above = crop_points(pts, [-1, -1, 0.005], [1, 1, 1])
    assert floor.mean() > 0.3  # the floor fills much of the view and lands at z = 0
    assert len(above) > 50
    # every point above the floor is on the box (1 cm of depth-quantisation slack), and its visible
    # faces reach the box's top and sides
    lo, hi = np.array([0.2, -0.25, 0.0]), np.array([0.4, -0.15, 0.2])
    assert np.all(above >= lo - 0.01) and np.all(above <= hi + 0.01)
    np.testing.assert_allclose(above.max(0)[2], 0.2, atol=0.01)
