// Fused per-pixel shading chain of fitting/render/renderer.py, CPU driver. The per-pixel maths
// (forward and hand-written backward) is in pixel.h, shared with the CUDA driver
// (shade_cuda.cu).
//
// The torch path runs ~100 small elementwise kernels, gathers and scatter-adds over the N
// covered pixels; here each pixel is one pass over registers. Pixels arrive sorted by view,
// so threads take contiguous view ranges: the rows of Xc, vn, sh and of per-view textures /
// vertex colours a thread writes are then its own; a texture (or colour table) shared by all
// views gets one gradient buffer per thread range, summed at the end (deterministic for a
// given thread count).

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/utils/pybind.h>

#include "pixel.h"
#include "shade_inputs.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace {

using namespace flame_fit;

// each thread range owns the rows it writes (see the top of this file): no atomics needed
struct PlainAdd {
  template <typename T>
  static inline void add(T* p, T v) { *p += v; }
};

// Returns colour, bary, depth, normals, albedo, shading.
std::vector<at::Tensor> shade_forward(const at::Tensor& Xc, const at::Tensor& vn, const at::Tensor& Kinv,
                                      const at::Tensor& pix, const at::Tensor& view, const at::Tensor& face,
                                      const at::Tensor& faces, int64_t H, int64_t W, int64_t mode,
                                      const at::Tensor& src, const at::Tensor& vt, const at::Tensor& ft,
                                      const at::Tensor& sh, int64_t C, const std::vector<double>& shc) {
  TORCH_CHECK(Xc.device().is_cpu(), "the CPU shading kernel takes CPU tensors");
  check_inputs(Xc, vn, Kinv, pix, view, face, faces, H, W, mode, src, vt, ft, sh, C, shc);
  const int64_t N = pix.size(0);
  const std::vector<at::Tensor> outs = forward_outputs(Xc, N, C);
  const at::Tensor &colour = outs[0], &bary = outs[1], &depth = outs[2], &normals = outs[3], &albedo = outs[4],
                   &shading = outs[5];
  AT_DISPATCH_FLOATING_TYPES(Xc.scalar_type(), "shade_forward", [&] {
    const Inputs<scalar_t> in = make_inputs<scalar_t>(Xc, vn, Kinv, pix, view, face, faces, H, W, mode, src, vt,
                                                      ft, sh, C, shc);
    scalar_t *co = colour.data_ptr<scalar_t>(), *ba = bary.data_ptr<scalar_t>(), *de = depth.data_ptr<scalar_t>();
    scalar_t *no = normals.data_ptr<scalar_t>(), *al = albedo.data_ptr<scalar_t>(), *sd = shading.data_ptr<scalar_t>();
    at::parallel_for(0, N, 1024, [&](int64_t begin, int64_t end) {
      Pixel<scalar_t> px;
      for (int64_t i = begin; i < end; ++i) {
        eval_pixel(in, i, px);
        for (int k = 0; k < 3; ++k) {
          ba[3 * i + k] = px.bary[k];
          no[3 * i + k] = px.n[k];
        }
        de[i] = px.depth;
        for (int64_t c = 0; c < C; ++c) {
          al[i * C + c] = px.albedo[c];
          sd[i * C + c] = px.shading[c];
          co[i * C + c] = px.albedo[c] * px.shading[c];
        }
      }
    });
  });
  return outs;
}

// grads: colour, bary, depth, normals, albedo, shading (empty tensor: unused output);
// need: Xc, vn, src, sh, Kinv. Returns their gradients (undefined where not needed).
std::vector<at::Tensor> shade_backward(const at::Tensor& Xc, const at::Tensor& vn, const at::Tensor& Kinv,
                                       const at::Tensor& pix, const at::Tensor& view, const at::Tensor& face,
                                       const at::Tensor& faces, int64_t H, int64_t W, int64_t mode,
                                       const at::Tensor& src, const at::Tensor& vt, const at::Tensor& ft,
                                       const at::Tensor& sh, int64_t C, const std::vector<double>& shc,
                                       const std::vector<at::Tensor>& grads, const std::vector<bool>& need) {
  TORCH_CHECK(Xc.device().is_cpu(), "the CPU shading kernel takes CPU tensors");
  check_inputs(Xc, vn, Kinv, pix, view, face, faces, H, W, mode, src, vt, ft, sh, C, shc);
  check_grads(Xc, pix, C, grads, need);
  const int64_t N = pix.size(0), B = Xc.size(0);
  std::vector<at::Tensor> grad_out = gradient_buffers(Xc, vn, src, sh, Kinv, mode, need);
  at::Tensor &gXc = grad_out[0], &gvn = grad_out[1], &gsrc = grad_out[2], &gsh = grad_out[3], &gK = grad_out[4];
  if (N == 0) return grad_out;

  // first pixel of every view (pixels are sorted by view), then thread ranges of whole
  // views with about equal pixel counts
  const int64_t* v = view.data_ptr<int64_t>();
  std::vector<int64_t> start(B + 1);
  for (int64_t b = 0; b <= B; ++b) start[b] = std::lower_bound(v, v + N, b) - v;
  int64_t R = std::max<int64_t>(1, std::min<int64_t>(B, at::get_num_threads()));
  // a shared texture needs a gradient buffer per range: bound their memory (~256 MB of floats)
  if (gsrc.defined() && src.size(0) == 1)
    R = std::max<int64_t>(1, std::min<int64_t>(R, 1 + (int64_t(1) << 26) / std::max<int64_t>(1, src.numel())));
  std::vector<int64_t> bound(R + 1, B);
  bound[0] = 0;
  for (int64_t r = 1; r < R; ++r) {
    const int64_t target = (N * r) / R;
    bound[r] = std::max(bound[r - 1], static_cast<int64_t>(std::lower_bound(start.begin(), start.end(), target) -
                                                           start.begin()));
    bound[r] = std::min(bound[r], B);
  }
  const bool shared_src = gsrc.defined() && src.size(0) == 1 && R > 1;
  at::Tensor extra;   // gradient buffers of ranges 1..R-1 for a texture / colour table shared by all views
  if (shared_src) extra = at::zeros({R - 1, src.numel()}, Xc.options());

  AT_DISPATCH_FLOATING_TYPES(Xc.scalar_type(), "shade_backward", [&] {
    const Inputs<scalar_t> in = make_inputs<scalar_t>(Xc, vn, Kinv, pix, view, face, faces, H, W, mode, src, vt,
                                                      ft, sh, C, shc);
    auto gp = [&](int k) { return grads[k].numel() > 0 ? grads[k].data_ptr<scalar_t>() : nullptr; };
    const Grads<scalar_t> g{gp(0), gp(1), gp(2), gp(3), gp(4), gp(5)};
    auto op = [](at::Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    scalar_t* src_main = op(gsrc);
    at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
      Pixel<scalar_t> px;
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* gsh_all = op(gsh);
        scalar_t* gK_all = op(gK);
        // SH and K^-1 gradients go to small per-view accumulators first: every pixel of a
        // view adds into the same few values, and a chain of read-modify-writes to memory is slow
        scalar_t acc[9 * kMaxC], kacc[9];
        Outs<scalar_t> o{op(gXc), op(gvn), src_main, gsh_all ? acc : nullptr, gK_all ? kacc : nullptr};
        if (shared_src && r > 0) o.src = extra.data_ptr<scalar_t>() + (r - 1) * src.numel();
        for (int64_t b = bound[r]; b < bound[r + 1]; ++b) {
          std::fill(acc, acc + 9 * C, scalar_t(0));
          std::fill(kacc, kacc + 9, scalar_t(0));
          for (int64_t i = start[b]; i < start[b + 1]; ++i) backward_pixel<scalar_t, PlainAdd>(in, g, o, i, px);
          if (gsh_all)
            for (int64_t k = 0; k < 9 * C; ++k) gsh_all[b * 9 * C + k] += acc[k];
          if (gK_all)
            for (int k = 0; k < 9; ++k) gK_all[b * 9 + k] += kacc[k];
        }
      }
    });
    if (shared_src) {
      const scalar_t* e = extra.data_ptr<scalar_t>();
      const int64_t n = src.numel();
      at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
        for (int64_t r = 0; r < R - 1; ++r)
          for (int64_t j = begin; j < end; ++j) src_main[j] += e[r * n + j];
      });
    }
  });
  return grad_out;
}

// shading.vertex_normals: area-weighted sums of right-hand face normals, normalised as
// raw / max(|raw|, eps). The torch version (gathers, three index_adds, their backward)
// costs as much as the whole per-pixel chain here. Returns the unit normals and the raw sums
// (kept for the backward). One view per task: a view's vertex rows are its own.
std::vector<at::Tensor> vnormals_forward(const at::Tensor& verts, const at::Tensor& faces, double eps) {
  TORCH_CHECK(verts.device().is_cpu() && verts.dim() == 3 && verts.size(2) == 3 && verts.is_contiguous() &&
                  (verts.scalar_type() == at::kFloat || verts.scalar_type() == at::kDouble),
              "verts must be a contiguous float (B, V, 3) CPU tensor");
  TORCH_CHECK(faces.device().is_cpu() && faces.scalar_type() == at::kLong && faces.is_contiguous() &&
                  faces.dim() == 2 && faces.size(1) == 3, "faces must be a contiguous int64 (F, 3) tensor");
  const int64_t B = verts.size(0), V = verts.size(1), F = faces.size(0);
  const int64_t* fa = faces.data_ptr<int64_t>();
  for (int64_t k = 0; k < 3 * F; ++k) TORCH_CHECK(fa[k] >= 0 && fa[k] < V, "faces indexes vertex ", fa[k], " of ", V);
  at::Tensor raw = at::zeros(verts.sizes(), verts.options()), unit = at::empty(verts.sizes(), verts.options());
  AT_DISPATCH_FLOATING_TYPES(verts.scalar_type(), "vnormals_forward", [&] {
    const scalar_t* X = verts.data_ptr<scalar_t>();
    scalar_t* n = raw.data_ptr<scalar_t>();
    scalar_t* u = unit.data_ptr<scalar_t>();
    const scalar_t e = static_cast<scalar_t>(eps);
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* Xb = X + b * V * 3;
        scalar_t* nb = n + b * V * 3;
        for (int64_t f = 0; f < F; ++f) add_face_normal<scalar_t, PlainAdd>(Xb, fa + 3 * f, nb);
        for (int64_t v = 0; v < V; ++v) normalise(nb + 3 * v, e, u + b * V * 3 + 3 * v);
      }
    });
  });
  return {unit, raw};
}

at::Tensor vnormals_backward(const at::Tensor& verts, const at::Tensor& faces, const at::Tensor& raw,
                             const at::Tensor& grad, double eps) {
  TORCH_CHECK(raw.sizes() == verts.sizes() && grad.sizes() == verts.sizes() && grad.is_contiguous() &&
                  raw.is_contiguous() && grad.scalar_type() == verts.scalar_type(),
              "raw normals and gradient must be contiguous tensors like verts");
  const int64_t B = verts.size(0), V = verts.size(1), F = faces.size(0);
  const int64_t* fa = faces.data_ptr<int64_t>();
  at::Tensor gverts = at::zeros(verts.sizes(), verts.options());
  AT_DISPATCH_FLOATING_TYPES(verts.scalar_type(), "vnormals_backward", [&] {
    const scalar_t* X = verts.data_ptr<scalar_t>();
    const scalar_t* n = raw.data_ptr<scalar_t>();
    const scalar_t* g = grad.data_ptr<scalar_t>();
    scalar_t* gx = gverts.data_ptr<scalar_t>();
    const scalar_t e = static_cast<scalar_t>(eps);
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> graw(V * 3);
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t v = 0; v < V; ++v)
          normalise_backward(n + (b * V + v) * 3, g + (b * V + v) * 3, e, graw.data() + 3 * v);
        for (int64_t f = 0; f < F; ++f)
          face_normal_backward<scalar_t, PlainAdd>(X + b * V * 3, fa + 3 * f, graw.data(), gx + b * V * 3);
      }
    });
  });
  return gverts;
}

// Calls visit(pair) for every counted outline pair (outline.h) of view b, whose coverage is
// cov (H*W, 1 = covered): horizontal pairs, then vertical ones, each in raster order.
template <typename T, typename Visit>
void for_each_pair(const OutlineInputs<T>& in, int64_t b, const uint8_t* cov, Visit&& visit) {
  const int64_t H = in.H, W = in.W;
  Pair<T> r;
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x + 1 < W; ++x)
      if (cov[y * W + x] != cov[y * W + x + 1]) {
        eval_pair(in, b, x, y, x + 1, y, true, r);
        if (r.ok) visit(r);
      }
  for (int64_t y = 0; y + 1 < H; ++y)
    for (int64_t x = 0; x < W; ++x)
      if (cov[y * W + x] != cov[(y + 1) * W + x]) {
        eval_pair(in, b, x, y, x, y + 1, false, r);
        if (r.ok) visit(r);
      }
}

// cov[i] = whether pixel i of view b is covered (one byte per pixel: the pair scans then read
// an eighth of the int64 face ids' memory)
inline void coverage(const int64_t* face, int64_t b, int64_t HW, uint8_t* cov) {
  const int64_t* fb = face + b * HW;
  for (int64_t i = 0; i < HW; ++i) cov[i] = fb[i] >= 0;
}

// silhouette._outline_delta and the clamp: [silhouette, raw] (B*H*W,), raw being the value
// before the clamp to [0, 1] (kept for the backward). One view per task; only the outline
// pairs (a few per cent of the pixels) do any maths.
std::vector<at::Tensor> outline_forward(const at::Tensor& Xc, const at::Tensor& faces, const at::Tensor& Kinv,
                                        const at::Tensor& face, int64_t H, int64_t W) {
  TORCH_CHECK(Xc.device().is_cpu(), "the CPU silhouette kernel takes CPU tensors");
  check_outline_inputs(Xc, faces, Kinv, face, H, W);
  const int64_t B = Xc.size(0), HW = H * W;
  at::Tensor raw = at::empty({B * HW}, Xc.options()), sil = at::empty({B * HW}, Xc.options());
  AT_DISPATCH_FLOATING_TYPES(Xc.scalar_type(), "outline_forward", [&] {
    const OutlineInputs<scalar_t> in = make_outline_inputs<scalar_t>(Xc, faces, Kinv, face, H, W);
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<uint8_t> cov(HW);
      for (int64_t b = begin; b < end; ++b) {
        scalar_t* rb = raw.data_ptr<scalar_t>() + b * HW;
        scalar_t* ob = sil.data_ptr<scalar_t>() + b * HW;
        coverage(in.face, b, HW, cov.data());
        for (int64_t i = 0; i < HW; ++i) rb[i] = ob[i] = cov[i];
        for_each_pair(in, b, cov.data(), [&](const Pair<scalar_t>& pr) {
          const int64_t i = pair_target(pr);
          rb[i] += pr.s - scalar_t(0.5);
          ob[i] = ff_min(ff_max(rb[i], scalar_t(0)), scalar_t(1));
        });
      }
    });
  });
  return {sil, raw};
}

// The backward of outline_forward: [gXc (B, V, 3), gKinv (B, 9)], each undefined unless needed.
std::vector<at::Tensor> outline_backward(const at::Tensor& Xc, const at::Tensor& faces, const at::Tensor& Kinv,
                                         const at::Tensor& face, int64_t H, int64_t W, const at::Tensor& raw,
                                         const at::Tensor& grad, bool need_X, bool need_K) {
  TORCH_CHECK(Xc.device().is_cpu(), "the CPU silhouette kernel takes CPU tensors");
  check_outline_inputs(Xc, faces, Kinv, face, H, W);
  check_outline_grads(Xc, raw, grad);
  const int64_t B = Xc.size(0), V = Xc.size(1), HW = H * W;
  at::Tensor gX, gK;
  if (need_X) gX = at::zeros(Xc.sizes(), Xc.options());
  if (need_K) gK = at::zeros(Kinv.sizes(), Xc.options());
  if (!need_X && !need_K) return {gX, gK};
  AT_DISPATCH_FLOATING_TYPES(Xc.scalar_type(), "outline_backward", [&] {
    const OutlineInputs<scalar_t> in = make_outline_inputs<scalar_t>(Xc, faces, Kinv, face, H, W);
    const scalar_t* r = raw.data_ptr<scalar_t>();
    const scalar_t* g = grad.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<uint8_t> cov(HW);
      for (int64_t b = begin; b < end; ++b) {
        scalar_t* gx = need_X ? gX.data_ptr<scalar_t>() + b * V * 3 : nullptr;
        scalar_t* gk = need_K ? gK.data_ptr<scalar_t>() + 9 * b : nullptr;
        coverage(in.face, b, HW, cov.data());
        for_each_pair(in, b, cov.data(), [&](const Pair<scalar_t>& pr) {
          const int64_t i = b * HW + pair_target(pr);
          const scalar_t gi = (r[i] >= scalar_t(0) && r[i] <= scalar_t(1)) ? g[i] : scalar_t(0);   // the clamp
          pair_backward<scalar_t, PlainAdd>(in, b, pr, gi, gx, gk);
        });
      }
    });
  });
  return {gX, gK};
}

// values (N, C) at flat pixels pix (N,) -> zero (B, C, H, W) image. One allocation, no
// channels-last intermediate and no permuting copy in the backward (the torch route costs
// three passes over a B*H*W*C buffer, each a fresh allocation).
at::Tensor scatter_image(const at::Tensor& values, const at::Tensor& pix, int64_t B, int64_t H, int64_t W) {
  TORCH_CHECK(values.device().is_cpu() && values.dim() == 2 && values.is_contiguous() &&
                  (values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble),
              "values must be a contiguous float (N, C) CPU tensor");
  TORCH_CHECK(pix.device().is_cpu() && pix.scalar_type() == at::kLong && pix.is_contiguous() && pix.dim() == 1 &&
                  pix.size(0) == values.size(0), "pix must be a contiguous int64 (N,) tensor");
  const int64_t N = values.size(0), C = values.size(1), HW = H * W;
  const int64_t* p = pix.data_ptr<int64_t>();
  for (int64_t i = 0; i < N; ++i) TORCH_CHECK(p[i] >= 0 && p[i] < B * HW, "pixel index out of the image");
  at::Tensor image = at::zeros({B, C, H, W}, values.options());
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "scatter_image", [&] {
    const scalar_t* v = values.data_ptr<scalar_t>();
    scalar_t* out = image.data_ptr<scalar_t>();
    at::parallel_for(0, N, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = p[i] / HW, q = p[i] - b * HW;
        for (int64_t c = 0; c < C; ++c) out[(b * C + c) * HW + q] = v[i * C + c];
      }
    });
  });
  return image;
}

// The backward of scatter_image: image (B, C, H, W), any strides (an expanded gradient is
// read in place) -> (N, C) at pix.
at::Tensor gather_image(const at::Tensor& image, const at::Tensor& pix) {
  TORCH_CHECK(image.device().is_cpu() && image.dim() == 4, "image must be a (B, C, H, W) CPU tensor");
  TORCH_CHECK(pix.device().is_cpu() && pix.scalar_type() == at::kLong && pix.is_contiguous() && pix.dim() == 1,
              "pix must be a contiguous int64 (N,) tensor");
  const int64_t N = pix.size(0), C = image.size(1), H = image.size(2), W = image.size(3), HW = H * W;
  const int64_t sb = image.stride(0), sc = image.stride(1), sh = image.stride(2), sw = image.stride(3);
  const int64_t* p = pix.data_ptr<int64_t>();
  for (int64_t i = 0; i < N; ++i) TORCH_CHECK(p[i] >= 0 && p[i] < image.size(0) * HW, "pixel index out of the image");
  at::Tensor out = at::empty({N, C}, image.options());
  AT_DISPATCH_FLOATING_TYPES(image.scalar_type(), "gather_image", [&] {
    const scalar_t* g = image.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, N, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = p[i] / HW, q = p[i] - b * HW, y = q / W, x = q - y * W;
        for (int64_t c = 0; c < C; ++c) o[i * C + c] = g[b * sb + c * sc + y * sh + x * sw];
      }
    });
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused CPU per-pixel shading chain of fitting.render.renderer (forward and backward)";
  m.def("forward", &shade_forward,
        "(Xc, vn, Kinv, pix, view, face, faces, H, W, mode, src, vt, ft, sh, C, shc) -> "
        "[colour, bary, depth, normals, albedo, shading]");
  m.def("backward", &shade_backward,
        "(same inputs..., grads[6], need[5]) -> [gXc, gvn, gsrc, gsh, gKinv] (None where not needed)");
  m.def("vnormals_forward", &vnormals_forward, "(verts (B, V, 3), faces (F, 3), eps) -> [unit, raw]");
  m.def("vnormals_backward", &vnormals_backward, "(verts, faces, raw, grad, eps) -> grad verts");
  m.def("outline_forward", &outline_forward,
        "(Xc, faces, Kinv (B, 9), face (B*H*W,), H, W) -> [silhouette, raw] (B*H*W,): antialiased coverage");
  m.def("outline_backward", &outline_backward,
        "(Xc, faces, Kinv, face, H, W, raw, grad, need_X, need_K) -> [gXc, gKinv] (None where not needed)");
  m.def("scatter_image", &scatter_image, "(values (N, C), pix (N,), B, H, W) -> (B, C, H, W), zero elsewhere");
  m.def("gather_image", &gather_image, "(image (B, C, H, W), pix (N,)) -> (N, C)");
}
