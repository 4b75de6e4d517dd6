// CPU visibility pass of fitting/render/rasterize.py (visible_faces), one view per task.
//
// Must give bit-identical (pix, face) to the torch path: the per-face maths is raster.h's
// (see there why every operation is written out), and the per-pixel edge tests below round
// the same way (build with -ffp-contract=off and without -ffast-math). Candidate pixels are the same as the torch path's too (small boxes padded to the
// _PAD_TO widths and shifted inside the image), because a pixel centre just outside a
// face's box can still pass the rounded edge test.

// the narrow headers, not torch/extension.h: the build takes ~20 s instead of ~45 s
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/utils/pybind.h>

#include "raster.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace {

using namespace flame_fit;

typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

// Rasterizes one view into zbuf (H*W int64 keys, zeroed by the caller).
void raster_view(const float* X, int64_t V, const int64_t* faces, int64_t F, const Camera& cam,
                 bool all_in_front, float nearf, float inv_near, bool cull, int64_t H, int64_t W,
                 std::vector<float>& uv, int64_t* zbuf) {
  const int* pad = kPadTo;
  static constexpr int kIdentity[kSmallBox + 1] = {0, 1, 2, 3, 4, 5, 6, 7, 8};
  if (std::min(H, W) < kSmallBox) pad = kIdentity;
  if (all_in_front) {   // project every vertex once, as the torch path's common branch
    uv.resize(2 * V);
    for (int64_t i = 0; i < V; ++i) project(X + 3 * i, cam, uv[2 * i], uv[2 * i + 1]);
  }
  for (int64_t f = 0; f < F; ++f) {
    const int64_t* fv = faces + 3 * f;
    const float* const P[3] = {X + 3 * fv[0], X + 3 * fv[1], X + 3 * fv[2]};
    const Box box = all_in_front ? projected_box(&uv[2 * fv[0]], &uv[2 * fv[1]], &uv[2 * fv[2]], H, W)
                                 : clipped_box(P, cam, nearf, H, W);
    const int64_t nx = box.x1 - box.x0 + 1, ny = box.y1 - box.y0 + 1;
    if (nx <= 0 || ny <= 0) continue;

    float a[4], b[4], c[4];
    if (!face_coefficients(P, cam, cull, a, b, c)) continue;

    // candidate pixels: rasterize.visible_faces pads small boxes and shifts them inside
    int64_t px = nx, py = ny, x0 = box.x0, y0 = box.y0;
    if (nx <= kSmallBox && ny <= kSmallBox) {
      px = pad[nx]; py = pad[ny];
      x0 = std::max<int64_t>(std::min(x0, W - px), 0);
      y0 = std::max<int64_t>(std::min(y0, H - py), 0);
    }
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
          const int64_t key = ok[l] ? zkey(invz[l], f) : 0;
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

// The CUDA kernel's per-face routine (raster.h raster_face_coarse) run on the CPU, for the
// tests: (pix, face) as the torch path gives with the CUDA candidate set. Serial per view.
std::tuple<at::Tensor, at::Tensor> visible_faces_coarse(const at::Tensor& Xc, const at::Tensor& faces,
                                                        const at::Tensor& K, int64_t H, int64_t W, double near,
                                                        bool cull_backfaces, bool all_in_front) {
  TORCH_CHECK(Xc.device().is_cpu() && Xc.scalar_type() == at::kFloat && Xc.is_contiguous() && Xc.dim() == 3,
              "Xc must be a contiguous float32 (B, V, 3) CPU tensor");
  TORCH_CHECK(faces.scalar_type() == at::kLong && faces.is_contiguous() && K.scalar_type() == at::kFloat &&
                  K.is_contiguous(), "faces int64 (F, 3), K float32 (B, 3, 3), contiguous");
  const int64_t B = Xc.size(0), V = Xc.size(1), F = faces.size(0);
  const float* X = Xc.data_ptr<float>();
  const int64_t* fa = faces.data_ptr<int64_t>();
  const float* Kp = K.data_ptr<float>();
  const float nearf = static_cast<float>(near), inv_near = static_cast<float>(1.0 / near);
  std::vector<int64_t> zbuf(B * H * W, 0);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const Camera cam = make_camera(Kp + 9 * b);
      int64_t* zb = zbuf.data() + b * H * W;
      for (int64_t f = 0; f < F; ++f) {
        const float* const P[3] = {X + (b * V + fa[3 * f]) * 3, X + (b * V + fa[3 * f + 1]) * 3,
                                   X + (b * V + fa[3 * f + 2]) * 3};
        raster_face_coarse(P, cam, all_in_front, nearf, inv_near, cull_backfaces, H, W, f,
                           [zb](int64_t pixel, int64_t key) { zb[pixel] = std::max(zb[pixel], key); });
      }
    }
  });
  int64_t n = 0;
  for (const int64_t k : zbuf) n += k != 0;
  at::Tensor pix = at::empty({n}, at::kLong), face = at::empty({n}, at::kLong);
  int64_t* pp = pix.data_ptr<int64_t>();
  int64_t* fp = face.data_ptr<int64_t>();
  for (int64_t p = 0, i = 0; p < B * H * W; ++p) {
    if (zbuf[p] == 0) continue;
    pp[i] = p;
    fp[i++] = 0x7FFFFFFF - (zbuf[p] & 0xFFFFFFFF);
  }
  return {pix, face};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CPU visibility pass of fitting.render.rasterize (bit-identical to the torch path)";
  m.def("visible_faces", &visible_faces, "(Xc, faces, K, H, W, near, cull_backfaces) -> (pix, face, ok)",
        py::arg("Xc"), py::arg("faces"), py::arg("K"), py::arg("H"), py::arg("W"), py::arg("near"),
        py::arg("cull_backfaces"),
        py::call_guard<py::gil_scoped_release>());   // pure C++ inside: let other Python threads run
  m.def("visible_faces_coarse", &visible_faces_coarse,
        "(Xc, faces, K, H, W, near, cull_backfaces, all_in_front) -> (pix, face): the CUDA kernel's per-face "
        "routine on the CPU (tests)",
        py::call_guard<py::gil_scoped_release>());
}
