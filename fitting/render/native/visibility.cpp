// CPU visibility pass of fitting/render/rasterize.py (visible_faces), one view per task.
//
// Must give bit-identical (pix, face) to the torch path, so every float32 operation below
// mirrors one torch operation, in the same order, rounded once (build with
// -ffp-contract=off and without -ffast-math: a fused multiply-add or a reassociation can
// flip a pixel centre that lies exactly on an edge). Python float scalars (near, 1/near)
// are rounded to float32 first, as torch does when it mixes them with a float32 tensor.
// Candidate pixels are the same as the torch path's too (small boxes padded to the
// _PAD_TO widths and shifted inside the image), because a pixel centre just outside a
// face's box can still pass the rounded edge test.

// the narrow headers, not torch/extension.h: the build takes ~20 s instead of ~45 s
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace {

constexpr int kSmallBox = 8;                                     // rasterize._SMALL_BOX
constexpr int kPadTo[kSmallBox + 1] = {0, 1, 2, 3, 4, 6, 6, 8, 8};   // rasterize._PAD_TO

// Camera constants of one view: K entries (boxes) and pinhole_inverse(K) entries (edges).
struct Camera {
  float fx, sk, cx, fy, cy;
  float k0, k1, k2, k4, k5;   // Kinv row-major entries 0, 1, 2, 4, 5 (the others are 0 0 0 1)
};

Camera make_camera(const float* K) {
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
inline float clampf(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

struct Box { int64_t x0, x1, y0, y1; };

typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

// rasterize._face_boxes: inclusive pixel box from the screen extent [umin, umax] x [vmin, vmax]
inline Box pixel_box(float umin, float umax, float vmin, float vmax, int64_t H, int64_t W) {
  Box b;
  b.x0 = static_cast<int64_t>(clampf(std::ceil(umin - 0.5f), 0.0f, static_cast<float>(W)));
  b.x1 = static_cast<int64_t>(clampf(std::floor(umax - 0.5f), -1.0f, static_cast<float>(W - 1)));
  b.y0 = static_cast<int64_t>(clampf(std::ceil(vmin - 0.5f), 0.0f, static_cast<float>(H)));
  b.y1 = static_cast<int64_t>(clampf(std::floor(vmax - 0.5f), -1.0f, static_cast<float>(H - 1)));
  return b;
}

// Box of the part of triangle P (3 corners xyz) in front of z = near (the clipping branch).
inline Box clipped_box(const float* P[3], const Camera& c, float nearf, int64_t H, int64_t W) {
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
    umin = std::min(umin, u); umax = std::max(umax, u);
    vmin = std::min(vmin, v); vmax = std::max(vmax, v);
  }
  return pixel_box(umin, umax, vmin, vmax, H, W);
}

inline float cross_x(const float* a, const float* b) { return (a[1] * b[2]) - (a[2] * b[1]); }
inline float cross_y(const float* a, const float* b) { return (a[2] * b[0]) - (a[0] * b[2]); }
inline float cross_z(const float* a, const float* b) { return (a[0] * b[1]) - (a[1] * b[0]); }

inline int64_t float_bits(float x) {
  int32_t i;
  std::memcpy(&i, &x, sizeof i);
  return static_cast<int64_t>(i);
}

// Rasterizes one view into zbuf (H*W int64 keys, zeroed by the caller).
void raster_view(const float* X, int64_t V, const int64_t* faces, int64_t F, const Camera& cam,
                 bool all_in_front, float nearf, float inv_near, bool cull, int64_t H, int64_t W,
                 std::vector<float>& uv, int64_t* zbuf) {
  const int* pad = kPadTo;
  static constexpr int kIdentity[kSmallBox + 1] = {0, 1, 2, 3, 4, 5, 6, 7, 8};
  if (std::min(H, W) < kSmallBox) pad = kIdentity;
  if (all_in_front) {   // project every vertex once, as the torch path's common branch
    uv.resize(2 * V);
    for (int64_t i = 0; i < V; ++i) {
      const float* p = X + 3 * i;
      const float x = p[0] / p[2], y = p[1] / p[2];
      uv[2 * i] = ((cam.fx * x) + (cam.sk * y)) + cam.cx;
      uv[2 * i + 1] = (cam.fy * y) + cam.cy;
    }
  }
  for (int64_t f = 0; f < F; ++f) {
    const int64_t* fv = faces + 3 * f;
    const float* P[3] = {X + 3 * fv[0], X + 3 * fv[1], X + 3 * fv[2]};
    Box box;
    if (all_in_front) {
      const float* a = &uv[2 * fv[0]];
      const float* b = &uv[2 * fv[1]];
      const float* c = &uv[2 * fv[2]];
      box = pixel_box(std::min(std::min(a[0], b[0]), c[0]), std::max(std::max(a[0], b[0]), c[0]),
                      std::min(std::min(a[1], b[1]), c[1]), std::max(std::max(a[1], b[1]), c[1]), H, W);
    } else {
      box = clipped_box(P, cam, nearf, H, W);
    }
    const int64_t nx = box.x1 - box.x0 + 1, ny = box.y1 - box.y0 + 1;
    if (nx <= 0 || ny <= 0) continue;

    // rasterize._face_coefficients
    float E[3][3];
    E[0][0] = cross_x(P[1], P[2]); E[0][1] = cross_y(P[1], P[2]); E[0][2] = cross_z(P[1], P[2]);
    E[1][0] = cross_x(P[2], P[0]); E[1][1] = cross_y(P[2], P[0]); E[1][2] = cross_z(P[2], P[0]);
    E[2][0] = cross_x(P[0], P[1]); E[2][1] = cross_y(P[0], P[1]); E[2][2] = cross_z(P[0], P[1]);
    const float det = ((P[0][0] * E[0][0]) + (P[0][1] * E[0][1])) + (P[0][2] * E[0][2]);
    if (cull ? !(det < 0.0f) : !(det != 0.0f)) continue;
    const float sgn = det > 0.0f ? 1.0f : -1.0f;
    float a[4], b[4], c[4];
    for (int i = 0; i < 3; ++i) {
      const float ex = E[i][0] * sgn, ey = E[i][1] * sgn, ez = E[i][2] * sgn;
      a[i] = ex * cam.k0;
      b[i] = (ex * cam.k1) + (ey * cam.k4);
      c[i] = ((ex * cam.k2) + (ey * cam.k5)) + ez;
    }
    const float inv_det = 1.0f / std::fabs(det);
    a[3] = ((a[0] + a[1]) + a[2]) * inv_det;
    b[3] = ((b[0] + b[1]) + b[2]) * inv_det;
    c[3] = ((c[0] + c[1]) + c[2]) * inv_det;

    // candidate pixels: rasterize.visible_faces pads small boxes and shifts them inside
    int64_t px = nx, py = ny, x0 = box.x0, y0 = box.y0;
    if (nx <= kSmallBox && ny <= kSmallBox) {
      px = pad[nx]; py = pad[ny];
      x0 = std::max<int64_t>(std::min(x0, W - px), 0);
      y0 = std::max<int64_t>(std::min(y0, H - py), 0);
    }
    const int64_t low = 0x7FFFFFFF - f;
    // 4 columns at a time (vector extensions: elementwise IEEE float32, the same roundings
    // as the scalar code); lanes past the box are masked off
    const v4f thr = {inv_near, inv_near, inv_near, inv_near};
    const v4f zero = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t x = 0; x < px; x += 4) {
      const float ux = static_cast<float>(x0 + x);
      const v4f u = v4f{ux, ux + 1.0f, ux + 2.0f, ux + 3.0f} + 0.5f;   // exact: small integers + 0.5
      const int nl = static_cast<int>(std::min<int64_t>(px - x, 4));   // lanes inside the box
      const v4i lanes = v4i{0, 1, 2, 3} < nl;
      const v4f au0 = a[0] * u, au1 = a[1] * u, au2 = a[2] * u, au3 = a[3] * u;
      for (int64_t y = y0; y < y0 + py; ++y) {
        const float v = static_cast<float>(y) + 0.5f;
        const v4f w0 = (au0 + b[0] * v) + c[0];
        const v4f w1 = (au1 + b[1] * v) + c[1];
        const v4f w2 = (au2 + b[2] * v) + c[2];
        const v4f invz = (au3 + b[3] * v) + c[3];
        const v4i ok = lanes & (w0 >= zero) & (w1 >= zero) & (w2 >= zero) & (invz <= thr);
        if (!(ok[0] | ok[1] | ok[2] | ok[3])) continue;
        int64_t* row = zbuf + y * W + x0 + x;
        for (int l = 0; l < nl; ++l) {   // branch-free: a lane is inside about half the time
          const int64_t key = ok[l] ? static_cast<int64_t>(static_cast<uint64_t>(float_bits(invz[l])) << 32) | low : 0;
          row[l] = std::max(row[l], key);
        }
      }
    }
  }
}

// Returns (pix (N,), face (N,), ok). ok is false (and the tensors empty) when the input
// holds a non-finite value: the torch path then decides (its float->int casts of NaN
// boxes are platform-defined, so there is nothing to match bit for bit).
std::tuple<at::Tensor, at::Tensor, bool> visible_faces(const at::Tensor& Xc, const at::Tensor& faces,
                                                        const at::Tensor& K, int64_t H, int64_t W,
                                                        double near, bool cull_backfaces) {
  TORCH_CHECK(Xc.device().is_cpu() && faces.device().is_cpu() && K.device().is_cpu(),
              "native visible_faces runs on CPU tensors only");
  TORCH_CHECK(Xc.dim() == 3 && Xc.size(2) == 3 && Xc.scalar_type() == at::kFloat && Xc.is_contiguous(),
              "Xc must be a contiguous float32 (B, V, 3) tensor");
  TORCH_CHECK(faces.dim() == 2 && faces.size(1) == 3 && faces.scalar_type() == at::kLong && faces.is_contiguous(),
              "faces must be a contiguous int64 (F, 3) tensor");
  TORCH_CHECK(K.dim() == 3 && K.size(0) == Xc.size(0) && K.size(1) == 3 && K.size(2) == 3 &&
              K.scalar_type() == at::kFloat && K.is_contiguous(), "K must be a contiguous float32 (B, 3, 3) tensor");
  TORCH_CHECK(H > 0 && W > 0, "image size must be positive");
  TORCH_CHECK(near > 0.0, "near must be > 0");
  const int64_t B = Xc.size(0), V = Xc.size(1), F = faces.size(0);
  const float* X = Xc.data_ptr<float>();
  const int64_t* fa = faces.data_ptr<int64_t>();
  const float* Kp = K.data_ptr<float>();
  const auto empty = [] { return at::empty({0}, at::kLong); };
  for (int64_t i = 0; i < 3 * F; ++i)
    TORCH_CHECK(fa[i] >= 0 && fa[i] < V, "faces index vertex ", fa[i], " but there are ", V, " vertices");
  const float nearf = static_cast<float>(near);
  const float inv_near = static_cast<float>(1.0 / near);
  // rasterize._face_boxes takes its projection shortcut when every vertex of every view is
  // in front of the near plane (min over the whole batch)
  bool all_in_front = true, finite = true;
  for (int64_t i = 0; i < B * V * 3; ++i) {
    if (!std::isfinite(X[i])) { finite = false; break; }
    if (i % 3 == 2 && !(X[i] >= nearf)) all_in_front = false;
  }
  for (int64_t i = 0; i < B * 9; ++i) finite = finite && std::isfinite(Kp[i]);
  if (!finite) return {empty(), empty(), false};

  std::vector<std::vector<int64_t>> hits(B);   // per view: flat pixel, face of its covered pixels
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> zbuf(H * W);
    std::vector<float> uv;
    for (int64_t v = begin; v < end; ++v) {
      std::fill(zbuf.begin(), zbuf.end(), 0);
      raster_view(X + v * V * 3, V, fa, F, make_camera(Kp + 9 * v), all_in_front, nearf, inv_near,
                  cull_backfaces, H, W, uv, zbuf.data());
      auto& out = hits[v];
      for (int64_t p = 0; p < H * W; ++p) {
        if (zbuf[p] != 0) {
          out.push_back(p);
          out.push_back(0x7FFFFFFF - (zbuf[p] & 0xFFFFFFFF));
        }
      }
    }
  });
  std::vector<int64_t> start(B + 1, 0);
  for (int64_t v = 0; v < B; ++v) start[v + 1] = start[v] + static_cast<int64_t>(hits[v].size() / 2);
  at::Tensor pix = at::empty({start[B]}, at::kLong), face = at::empty({start[B]}, at::kLong);
  int64_t* pp = pix.data_ptr<int64_t>();
  int64_t* fp = face.data_ptr<int64_t>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v) {
      const auto& h = hits[v];
      const int64_t base = v * H * W, n = static_cast<int64_t>(h.size() / 2);
      for (int64_t k = 0; k < n; ++k) {
        pp[start[v] + k] = base + h[2 * k];
        fp[start[v] + k] = h[2 * k + 1];
      }
    }
  });
  return {pix, face, true};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CPU visibility pass of fitting.render.rasterize (bit-identical to the torch path)";
  m.def("visible_faces", &visible_faces, "(Xc, faces, K, H, W, near, cull_backfaces) -> (pix, face, ok)",
        py::arg("Xc"), py::arg("faces"), py::arg("K"), py::arg("H"), py::arg("W"), py::arg("near"),
        py::arg("cull_backfaces"),
        py::call_guard<py::gil_scoped_release>());   // pure C++ inside: let other Python threads run
}
