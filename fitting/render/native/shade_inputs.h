// Tensor checks and raw-pointer views of the fused shading chain's and the silhouette's
// inputs, shared by the CPU (shade.cpp) and CUDA (shade_cuda.cu) drivers.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <vector>

#include "outline.h"
#include "pixel.h"

namespace flame_fit {

template <typename T>
Inputs<T> make_inputs(const at::Tensor& Xc, const at::Tensor& vn, const at::Tensor& Kinv, const at::Tensor& pix,
                      const at::Tensor& view, const at::Tensor& face, const at::Tensor& faces, int64_t H,
                      int64_t W, int64_t mode, const at::Tensor& src, const at::Tensor& vt, const at::Tensor& ft,
                      const at::Tensor& sh, int64_t C, const std::vector<double>& shc) {
  Inputs<T> in;
  in.Xc = Xc.data_ptr<T>();
  in.vn = vn.data_ptr<T>();
  in.Kinv = Kinv.data_ptr<T>();
  in.pix = pix.data_ptr<int64_t>();
  in.view = view.data_ptr<int64_t>();
  in.face = face.data_ptr<int64_t>();
  in.faces = faces.data_ptr<int64_t>();
  in.B = Xc.size(0);
  in.V = Xc.size(1);
  in.N = pix.size(0);
  in.H = H;
  in.W = W;
  in.C = C;
  in.mode = mode;
  in.src = mode == kNone ? nullptr : src.data_ptr<T>();
  in.Bs = mode == kNone ? 1 : src.size(0);
  in.Ht = mode == kTexture ? src.size(1) : 0;
  in.Wt = mode == kTexture ? src.size(2) : 0;
  in.vt = mode == kTexture ? vt.data_ptr<T>() : nullptr;
  in.ft = mode == kTexture ? ft.data_ptr<int64_t>() : nullptr;
  in.sh = sh.numel() > 0 ? sh.data_ptr<T>() : nullptr;
  for (int k = 0; k < 9; ++k) in.shc[k] = static_cast<T>(shc[k]);
  return in;
}

inline void check_inputs(const at::Tensor& Xc, const at::Tensor& vn, const at::Tensor& Kinv, const at::Tensor& pix,
                  const at::Tensor& view, const at::Tensor& face, const at::Tensor& faces, int64_t H, int64_t W,
                  int64_t mode, const at::Tensor& src, const at::Tensor& vt, const at::Tensor& ft,
                  const at::Tensor& sh, int64_t C, const std::vector<double>& shc) {
  const auto dt = Xc.scalar_type();
  const auto dev = Xc.device();
  auto ok = [&](const at::Tensor& t) { return t.device() == dev && t.scalar_type() == dt && t.is_contiguous(); };
  auto ok_long = [&](const at::Tensor& t) {
    return t.device() == dev && t.scalar_type() == at::kLong && t.is_contiguous();
  };
  const bool host = dev.is_cpu();   // index range checks read the data: on the host only
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "Xc must be float32 or float64");
  TORCH_CHECK(ok(Xc) && Xc.dim() == 3 && Xc.size(2) == 3, "Xc must be a contiguous CPU (B, V, 3) tensor");
  const int64_t B = Xc.size(0), V = Xc.size(1), F = faces.size(0), N = pix.size(0);
  TORCH_CHECK(ok(vn) && vn.sizes() == Xc.sizes(), "vn must be a contiguous (B, V, 3) tensor of Xc's dtype");
  TORCH_CHECK(ok(Kinv) && Kinv.numel() == 9 * B, "Kinv must be a contiguous (B, 3, 3) tensor of Xc's dtype");
  TORCH_CHECK(ok_long(pix) && ok_long(view) && ok_long(face) && pix.dim() == 1 && view.sizes() == pix.sizes() &&
                  face.sizes() == pix.sizes(), "pix, view, face must be contiguous int64 (N,) tensors");
  TORCH_CHECK(ok_long(faces) && faces.dim() == 2 && faces.size(1) == 3, "faces must be a contiguous int64 (F, 3)");
  TORCH_CHECK(H > 0 && W > 0 && H * W < (int64_t(1) << 31), "image size must be positive and below 2^31 pixels");
  TORCH_CHECK(C >= 1 && C <= kMaxC, "1 to ", kMaxC, " colour channels");
  TORCH_CHECK(shc.size() == 9, "9 SH constants");
  TORCH_CHECK(mode == kNone || mode == kTexture || mode == kVertex, "unknown albedo mode");
  if (mode == kTexture) {
    TORCH_CHECK(ok(src) && src.dim() == 4 && (src.size(0) == 1 || src.size(0) == B) && src.size(3) == C &&
                    src.size(1) > 0 && src.size(2) > 0, "texture must be a contiguous (1 or B, Ht, Wt, C) tensor");
    TORCH_CHECK(ok(vt) && vt.dim() == 2 && vt.size(1) == 2, "verts_uvs must be a contiguous (T, 2) tensor");
    TORCH_CHECK(ok_long(ft) && ft.sizes() == faces.sizes(), "faces_uvs must be contiguous int64 like faces");
    const int64_t* f = ft.data_ptr<int64_t>();
    for (int64_t k = 0; host && k < 3 * F; ++k)
      TORCH_CHECK(f[k] >= 0 && f[k] < vt.size(0), "faces_uvs indexes UV ", f[k], " of ", vt.size(0));
  } else if (mode == kVertex) {
    TORCH_CHECK(ok(src) && src.dim() == 3 && (src.size(0) == 1 || src.size(0) == B) && src.size(1) == V &&
                    src.size(2) == C, "vertex colours must be a contiguous (1 or B, V, C) tensor");
  }
  if (sh.numel() > 0)
    TORCH_CHECK(ok(sh) && sh.dim() == 3 && sh.size(0) == B && sh.size(1) == 9 && sh.size(2) == C,
                "sh must be a contiguous (B, 9, C) tensor");
  if (!host) return;   // on a device: the renderer's own visibility pass made these indices
  const int64_t* fa = faces.data_ptr<int64_t>();
  for (int64_t k = 0; k < 3 * F; ++k)
    TORCH_CHECK(fa[k] >= 0 && fa[k] < V, "faces indexes vertex ", fa[k], " of ", V);
  const int64_t* p = pix.data_ptr<int64_t>();
  const int64_t* v = view.data_ptr<int64_t>();
  const int64_t* fc = face.data_ptr<int64_t>();
  for (int64_t i = 0; i < N; ++i) {
    TORCH_CHECK(v[i] >= 0 && v[i] < B && p[i] >= v[i] * H * W && p[i] < (v[i] + 1) * H * W && fc[i] >= 0 &&
                    fc[i] < F, "pixel ", i, ": view, pix or face out of range");
    TORCH_CHECK(i == 0 || v[i] >= v[i - 1], "pixels must be sorted by view");
  }
}

// The backward's incoming gradients: colour, bary, depth, normals, albedo, shading (an empty
// tensor for an unused output), and the five need flags (Xc, vn, src, sh, Kinv).
inline void check_grads(const at::Tensor& Xc, const at::Tensor& pix, int64_t C, const std::vector<at::Tensor>& grads,
                        const std::vector<bool>& need) {
  TORCH_CHECK(grads.size() == 6 && need.size() == 5, "6 output gradients and 5 flags");
  const int64_t N = pix.size(0);
  const int64_t widths[6] = {C, 3, 1, 3, C, C};
  for (int k = 0; k < 6; ++k)
    if (grads[k].numel() > 0)
      TORCH_CHECK(grads[k].device() == Xc.device() && grads[k].scalar_type() == Xc.scalar_type() &&
                      grads[k].is_contiguous() && grads[k].numel() == N * widths[k],
                  "gradient ", k, " must be a contiguous tensor of Xc's dtype and device with ", widths[k],
                  " values per pixel");
}


// The forward's outputs, uninitialised: colour (N, C), bary (N, 3), depth (N,), normals (N, 3),
// albedo (N, C), shading (N, C), like Xc.
inline std::vector<at::Tensor> forward_outputs(const at::Tensor& Xc, int64_t N, int64_t C) {
  const auto opt = Xc.options();
  return {at::empty({N, C}, opt), at::empty({N, 3}, opt), at::empty({N}, opt),
          at::empty({N, 3}, opt), at::empty({N, C}, opt), at::empty({N, C}, opt)};
}

// The backward's zeroed gradients of Xc, vn, src, sh, Kinv where ``need`` asks (undefined
// otherwise, and for an absent albedo source or SH).
inline std::vector<at::Tensor> gradient_buffers(const at::Tensor& Xc, const at::Tensor& vn, const at::Tensor& src,
                                                const at::Tensor& sh, const at::Tensor& Kinv, int64_t mode,
                                                const std::vector<bool>& need) {
  const auto opt = Xc.options();
  std::vector<at::Tensor> g(5);
  if (need[0]) g[0] = at::zeros(Xc.sizes(), opt);
  if (need[1]) g[1] = at::zeros(vn.sizes(), opt);
  if (need[2] && mode != kNone) g[2] = at::zeros(src.sizes(), opt);
  if (need[3] && sh.numel() > 0) g[3] = at::zeros(sh.sizes(), opt);
  if (need[4]) g[4] = at::zeros(Kinv.sizes(), opt);
  return g;
}

// The silhouette's inputs (outline.h): Xc (B, V, 3) float32 / float64, faces (F, 3) int64,
// Kinv (B, 9) of Xc's dtype, face (B*H*W) int64 (-1 or a face), grad / raw (B*H*W) of Xc's
// dtype when given; all contiguous on Xc's device. Index ranges are checked on the host only.
inline void check_outline_inputs(const at::Tensor& Xc, const at::Tensor& faces, const at::Tensor& Kinv,
                                 const at::Tensor& face, int64_t H, int64_t W) {
  const auto dev = Xc.device();
  const auto dt = Xc.scalar_type();
  TORCH_CHECK(Xc.dim() == 3 && Xc.size(2) == 3 && Xc.is_contiguous() && (dt == at::kFloat || dt == at::kDouble),
              "Xc must be a contiguous float32 / float64 (B, V, 3) tensor");
  const int64_t B = Xc.size(0), V = Xc.size(1);
  TORCH_CHECK(faces.device() == dev && faces.scalar_type() == at::kLong && faces.is_contiguous() &&
                  faces.dim() == 2 && faces.size(1) == 3, "faces must be a contiguous int64 (F, 3) tensor on Xc's device");
  TORCH_CHECK(Kinv.device() == dev && Kinv.scalar_type() == dt && Kinv.is_contiguous() && Kinv.dim() == 2 &&
                  Kinv.size(0) == B && Kinv.size(1) == 9, "Kinv must be a contiguous (B, 9) tensor like Xc");
  TORCH_CHECK(H > 0 && W > 0 && face.device() == dev && face.scalar_type() == at::kLong && face.is_contiguous() &&
                  face.dim() == 1 && face.size(0) == B * H * W, "face must be a contiguous int64 (B*H*W,) tensor");
  if (!dev.is_cpu()) return;
  const int64_t F = faces.size(0);
  const int64_t* fa = faces.data_ptr<int64_t>();
  for (int64_t k = 0; k < 3 * F; ++k) TORCH_CHECK(fa[k] >= 0 && fa[k] < V, "faces indexes vertex ", fa[k], " of ", V);
  const int64_t* fc = face.data_ptr<int64_t>();
  for (int64_t k = 0; k < B * H * W; ++k) TORCH_CHECK(fc[k] >= -1 && fc[k] < F, "face ", fc[k], " out of range");
}

template <typename T>
OutlineInputs<T> make_outline_inputs(const at::Tensor& Xc, const at::Tensor& faces, const at::Tensor& Kinv,
                                     const at::Tensor& face, int64_t H, int64_t W) {
  return {Xc.data_ptr<T>(), faces.data_ptr<int64_t>(), Kinv.data_ptr<T>(), face.data_ptr<int64_t>(), Xc.size(1), H, W};
}

inline void check_outline_grads(const at::Tensor& Xc, const at::Tensor& raw, const at::Tensor& grad) {
  for (const at::Tensor* t : {&raw, &grad})
    TORCH_CHECK(t->device() == Xc.device() && t->scalar_type() == Xc.scalar_type() && t->is_contiguous() &&
                    t->dim() == 1 && t->numel() == raw.numel(), "raw and grad must be contiguous (B*H*W,) tensors like Xc");
}

}  // namespace flame_fit
