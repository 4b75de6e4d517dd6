// Per-face maths of the visibility pass (rasterize.visible_faces), shared by the CPU driver
// (visibility.cpp) and the CUDA one (shade_cuda.cu): camera constants, the face's pixel box
// and its edge-function / inverse-depth coefficients.
//
// Must give bit-identical results to the torch path, so every float32 operation mirrors one
// torch operation, in the same order, rounded once. Build without FMA contraction
// (g++ -ffp-contract=off, nvcc -fmad=false) and without fast-math: a fused multiply-add or a
// reassociation can flip a pixel centre that lies exactly on an edge. Python float scalars
// (near, 1/near) are rounded to float32 first, as torch does when it mixes them with a
// float32 tensor.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "hd.h"

namespace flame_fit {

constexpr int kSmallBox = 8;                                          // rasterize._SMALL_BOX
constexpr int kPadTo[kSmallBox + 1] = {0, 1, 2, 3, 4, 6, 6, 8, 8};        // rasterize._PAD_TO

// rasterize._PAD_TO_COARSE (the torch path's candidate boxes on CUDA) of a width n <= kSmallBox;
// a function, not a table, so device code can use it
FF_INLINE int64_t pad_coarse(int64_t n) { return n <= 0 ? 0 : (n <= 4 ? 4 : 8); }

// Camera constants of one view: K entries (boxes) and pinhole_inverse(K) entries (edges).
struct Camera {
  float fx, sk, cx, fy, cy;
  float k0, k1, k2, k4, k5;   // Kinv row-major entries 0, 1, 2, 4, 5 (the others are 0 0 0 1)
};

FF_INLINE Camera make_camera(const float* K) {
  Camera c;
  c.fx = K[0]; c.sk = K[1]; c.cx = K[2]; c.fy = K[4]; c.cy = K[5];
  // cameras.pinhole_inverse; `1.0 / fx` is reciprocal(fx) * 1.0 in torch
  const float ifx = 1.0f / c.fx, ify = 1.0f / c.fy;
  c.k0 = ifx;
  c.k1 = ((-c.sk) * ifx) * ify;
  c.k2 = (((c.sk * c.cy) - (c.cx * c.fy)) * ifx) * ify;
  c.k4 = ify;
  c.k5 = (-c.cy) * ify;
  return c;
}

// torch.clamp semantics (NaN passes through)
FF_INLINE float clampf(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

struct Box { int64_t x0, x1, y0, y1; };

// rasterize._face_boxes: inclusive pixel box from the screen extent [umin, umax] x [vmin, vmax]
FF_INLINE Box pixel_box(float umin, float umax, float vmin, float vmax, int64_t H, int64_t W) {
  Box b;
  b.x0 = static_cast<int64_t>(clampf(ceilf(umin - 0.5f), 0.0f, static_cast<float>(W)));
  b.x1 = static_cast<int64_t>(clampf(floorf(umax - 0.5f), -1.0f, static_cast<float>(W - 1)));
  b.y0 = static_cast<int64_t>(clampf(ceilf(vmin - 0.5f), 0.0f, static_cast<float>(H)));
  b.y1 = static_cast<int64_t>(clampf(floorf(vmax - 0.5f), -1.0f, static_cast<float>(H - 1)));
  return b;
}

// Pixel coordinates (u, v) of a camera-frame point in front of the camera (the common branch
// of rasterize._face_boxes, which projects every vertex once).
FF_INLINE void project(const float* p, const Camera& c, float& u, float& v) {
  const float x = p[0] / p[2], y = p[1] / p[2];
  u = ((c.fx * x) + (c.sk * y)) + c.cx;
  v = (c.fy * y) + c.cy;
}

// Box of three projected corners uv[k] = (u, v).
FF_INLINE Box projected_box(const float* a, const float* b, const float* c, int64_t H, int64_t W) {
  return pixel_box(ff_min(ff_min(a[0], b[0]), c[0]), ff_max(ff_max(a[0], b[0]), c[0]),
                   ff_min(ff_min(a[1], b[1]), c[1]), ff_max(ff_max(a[1], b[1]), c[1]), H, W);
}

// Box of the part of triangle P (3 corners xyz) in front of z = near (the clipping branch).
FF_INLINE Box clipped_box(const float* const P[3], const Camera& c, float nearf, int64_t H, int64_t W) {
  float umin = FLT_MAX, umax = -FLT_MAX, vmin = FLT_MAX, vmax = -FLT_MAX;
  float Q[6][3];
  bool valid[6];
  for (int k = 0; k < 3; ++k) {
    const float* Pi = P[k];
    const float* Pj = P[(k + 1) % 3];
    const float zi = Pi[2], zj = Pj[2];
    const bool crosses = ((zi - nearf) * (zj - nearf)) < 0.0f;
    const float t = clampf((nearf - zi) / (crosses ? (zj - zi) : 1.0f), 0.0f, 1.0f);
    for (int d = 0; d < 3; ++d) {
      Q[k][d] = Pi[d];
      Q[3 + k][d] = Pi[d] + t * (Pj[d] - Pi[d]);
    }
    valid[k] = zi >= nearf;
    valid[3 + k] = crosses;
  }
  for (int k = 0; k < 6; ++k) {
    float qz = Q[k][2];
    qz = qz < nearf ? nearf : qz;                       // clamp_min(near)
    const float qx = Q[k][0] / qz, qy = Q[k][1] / qz;
    const float u = ((c.fx * qx) + (c.sk * qy)) + c.cx;
    const float v = (c.fy * qy) + c.cy;
    if (!valid[k]) continue;
    // amin / amax over the valid corners (finite here: qz >= near > 0)
    umin = ff_min(umin, u); umax = ff_max(umax, u);
    vmin = ff_min(vmin, v); vmax = ff_max(vmax, v);
  }
  return pixel_box(umin, umax, vmin, vmax, H, W);
}

FF_INLINE float cross_x(const float* a, const float* b) { return (a[1] * b[2]) - (a[2] * b[1]); }
FF_INLINE float cross_y(const float* a, const float* b) { return (a[2] * b[0]) - (a[0] * b[2]); }
FF_INLINE float cross_z(const float* a, const float* b) { return (a[0] * b[1]) - (a[1] * b[0]); }

// rasterize._face_coefficients of triangle P: w_i = (a[i] u + b[i] v) + c[i] for the three
// edges (sign-normalised: all >= 0 inside) and inverse depth at i = 3. Returns whether the
// face draws at all (det != 0, or det < 0 when culling back faces).
FF_INLINE bool face_coefficients(const float* const P[3], const Camera& cam, bool cull, float a[4], float b[4],
                                 float c[4]) {
  float E[3][3];
  E[0][0] = cross_x(P[1], P[2]); E[0][1] = cross_y(P[1], P[2]); E[0][2] = cross_z(P[1], P[2]);
  E[1][0] = cross_x(P[2], P[0]); E[1][1] = cross_y(P[2], P[0]); E[1][2] = cross_z(P[2], P[0]);
  E[2][0] = cross_x(P[0], P[1]); E[2][1] = cross_y(P[0], P[1]); E[2][2] = cross_z(P[0], P[1]);
  const float det = ((P[0][0] * E[0][0]) + (P[0][1] * E[0][1])) + (P[0][2] * E[0][2]);
  if (cull ? !(det < 0.0f) : !(det != 0.0f)) return false;
  const float sgn = det > 0.0f ? 1.0f : -1.0f;
  for (int i = 0; i < 3; ++i) {
    const float ex = E[i][0] * sgn, ey = E[i][1] * sgn, ez = E[i][2] * sgn;
    a[i] = ex * cam.k0;
    b[i] = (ex * cam.k1) + (ey * cam.k4);
    c[i] = ((ex * cam.k2) + (ey * cam.k5)) + ez;
  }
  const float inv_det = 1.0f / fabsf(det);
  a[3] = ((a[0] + a[1]) + a[2]) * inv_det;
  b[3] = ((b[0] + b[1]) + b[2]) * inv_det;
  c[3] = ((c[0] + c[1]) + c[2]) * inv_det;
  return true;
}

FF_INLINE int64_t float_bits(float x) {
#ifdef __CUDA_ARCH__
  return static_cast<int64_t>(__float_as_int(x));
#else
  int32_t i;
  std::memcpy(&i, &x, sizeof i);
  return static_cast<int64_t>(i);
#endif
}

// z-buffer key (rasterize._key): float32 bits of inverse depth << 32 | (2^31 - 1 - face)
FF_INLINE int64_t zkey(float invz, int64_t face) {
  return static_cast<int64_t>(static_cast<uint64_t>(float_bits(invz)) << 32) | (0x7FFFFFFF - face);
}

// One face of the visibility pass with the torch path's CUDA candidates
// (rasterize._visible_faces_torch on a device in _COARSE_DEVICES): the box of the part in
// front of the near plane, the edge table, then every candidate pixel (small boxes padded to a
// _PAD_TO_COARSE square when the image is at least kSmallBox a side, shifted inside the image)
// whose centre passes the edge and near tests: emit(y * W + x, key) with the z-buffer key
// (only keys > 0, which are the ones that can win against an empty 0). The CUDA kernel calls it
// per (view, face); visibility.cpp's visible_faces_coarse runs it on the CPU for the tests.
// P: the face's camera-frame corners; all_in_front: every vertex of the batch at z >= near
// (the torch path then projects corners instead of clipping).
template <typename Emit>
FF_INLINE void raster_face_coarse(const float* const P[3], const Camera& cam, bool all_in_front, float nearf,
                                  float inv_near, bool cull, int64_t H, int64_t W, int64_t face, Emit&& emit) {
  Box box;
  if (all_in_front) {
    float uv[3][2];
    for (int k = 0; k < 3; ++k) project(P[k], cam, uv[k][0], uv[k][1]);
    box = projected_box(uv[0], uv[1], uv[2], H, W);
  } else {
    box = clipped_box(P, cam, nearf, H, W);
  }
  const int64_t nx = box.x1 - box.x0 + 1, ny = box.y1 - box.y0 + 1;
  if (nx <= 0 || ny <= 0) return;
  float a[4], b[4], c[4];
  if (!face_coefficients(P, cam, cull, a, b, c)) return;
  int64_t px = nx, py = ny;
  if (nx <= kSmallBox && ny <= kSmallBox && (H < W ? H : W) >= kSmallBox) {
    const int64_t sx = pad_coarse(nx), sy = pad_coarse(ny);
    px = py = sx > sy ? sx : sy;
  }
  int64_t x0 = box.x0 < W - px ? box.x0 : W - px, y0 = box.y0 < H - py ? box.y0 : H - py;
  x0 = x0 > 0 ? x0 : 0;
  y0 = y0 > 0 ? y0 : 0;
  for (int64_t y = y0; y < y0 + py; ++y) {
    const float v = static_cast<float>(y) + 0.5f;
    for (int64_t x = x0; x < x0 + px; ++x) {
      const float u = static_cast<float>(x) + 0.5f;                  // exact: small integers + 0.5
      const float w0 = (a[0] * u + b[0] * v) + c[0];
      const float w1 = (a[1] * u + b[1] * v) + c[1];
      const float w2 = (a[2] * u + b[2] * v) + c[2];
      const float invz = (a[3] * u + b[3] * v) + c[3];
      if (!(ff_min(ff_min(w0, w1), w2) >= 0.0f && invz <= inv_near)) continue;
      const int64_t key = zkey(invz, face);
      if (key > 0) emit(y * W + x, key);
    }
  }
}

}  // namespace flame_fit
