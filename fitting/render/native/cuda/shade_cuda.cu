// CUDA drivers of the renderer's compiled path (see shade_cuda.cpp for the Python API):
//
// * raster: the visibility pass, one thread per (view, face) writing 64-bit z-buffer keys
//   with atomicMax. The per-face work is raster.h's raster_face_coarse (the torch path's CUDA
//   candidate pixels, rasterize._PAD_TO_COARSE), which the CPU tests also run (through
//   visibility.cpp's visible_faces_coarse), so the keys are bit-identical to
//   rasterize._visible_faces_torch on CUDA. The whole extension is built with -fmad=false
//   for that reason (a contracted multiply-add rounds once where torch rounds twice).
// * shade forward / backward: one thread per covered pixel, the maths of pixel.h; the
//   backward adds into vertex and texel gradients with atomicAdd (so float sums are not
//   bit-reproducible run to run, as with torch's index_add on CUDA), and into the per-view SH
//   and K^-1 gradients through one warp reduction when the warp's pixels share a view (they
//   are sorted by view, so almost always).
// * vertex normals forward / backward (shading.vertex_normals), one thread per face or vertex.
// * the silhouette's outline antialiasing (outline.h), one thread per pixel; the backward adds
//   into vertex gradients with atomicAdd and into the per-view K^-1 gradient as above.
//
// cuda_emulation.cpp compiles this file as C++ for the CPU (FF_CUDA_EMULATION, with
// cuda_emulation.h for the CUDA names), so the tests run these drivers on machines without a
// GPU; hence every launch goes through launch() below.

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <cstdint>
#include <utility>
#include <vector>

#ifdef FF_CUDA_EMULATION
#include "cuda_emulation.h"   // compiled as C++ for the CPU: see cuda_emulation.cpp
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "../outline.h"
#include "../pixel.h"
#include "../raster.h"
#include "../shade_inputs.h"

namespace flame_fit {

namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

#ifdef FF_CUDA_EMULATION
using DeviceGuard = emulation::DeviceGuard;
using emulation::kDevice;
using emulation::on_device;
#else
using DeviceGuard = c10::cuda::CUDAGuard;
constexpr const char* kDevice = "CUDA";
inline bool on_device(const at::Tensor& t) { return t.is_cuda(); }
#endif

// Runs kernel(args...) on the current stream with one thread per item of n (kernels return
// for indices >= n); nothing when n is 0 (CUDA rejects an empty grid).
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), int64_t n, Args&&... args) {
  if (n <= 0) return;
#ifdef FF_CUDA_EMULATION
  emulation::launch(blocks_for(n), kThreads, [&] { kernel(args...); });
#else
  kernel<<<blocks_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

// ---------------------------------------------------------------------------------------
// visibility

__global__ void raster_kernel(const float* __restrict__ X, int64_t B, int64_t V, const int64_t* __restrict__ faces,
                              int64_t F, const float* __restrict__ K, bool all_in_front, float nearf,
                              float inv_near, bool cull, int64_t H, int64_t W,
                              unsigned long long* __restrict__ zbuf) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= B * F) return;
  const int64_t b = idx / F, f = idx - b * F;
  const Camera cam = make_camera(K + 9 * b);
  const float* Xb = X + b * V * 3;
  const int64_t* fv = faces + 3 * f;
  const float* const P[3] = {Xb + 3 * fv[0], Xb + 3 * fv[1], Xb + 3 * fv[2]};
  unsigned long long* zb = zbuf + b * H * W;
  // positive keys order as unsigned like the signed ones
  raster_face_coarse(P, cam, all_in_front, nearf, inv_near, cull, H, W, f, [zb](int64_t pixel, int64_t key) {
    atomicMax(zb + pixel, static_cast<unsigned long long>(key));
  });
}

// ---------------------------------------------------------------------------------------
// shading

struct AtomicAdd {
  template <typename T>
  __device__ static void add(T* p, T v) { atomicAdd(p, v); }
};

template <typename T>
__global__ void shade_forward_kernel(const Inputs<T> in, T* __restrict__ co, T* __restrict__ ba, T* __restrict__ de,
                                     T* __restrict__ no, T* __restrict__ al, T* __restrict__ sd) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= in.N) return;
  Pixel<T> px;
  eval_pixel(in, i, px);
  for (int k = 0; k < 3; ++k) {
    ba[3 * i + k] = px.bary[k];
    no[3 * i + k] = px.n[k];
  }
  de[i] = px.depth;
  for (int64_t c = 0; c < in.C; ++c) {
    al[i * in.C + c] = px.albedo[c];
    sd[i * in.C + c] = px.shading[c];
    co[i * in.C + c] = px.albedo[c] * px.shading[c];
  }
}

// Adds vals[0..n) of this lane's view b (-1: inactive lane) into out[b * n + k]: one warp
// reduction and one atomic per value when the whole warp has the same view, else one
// atomic per lane and value. Every lane of the warp must call it.
template <typename T>
__device__ void add_per_view(const T* vals, int n, int64_t b, T* out) {
  const unsigned full = 0xffffffffu;
  const long long b0 = __shfl_sync(full, static_cast<long long>(b), 0);
  if (__all_sync(full, b < 0 || b == b0)) {
    if (b0 < 0) return;                       // lane 0 is inactive only when all lanes are
    for (int k = 0; k < n; ++k) {
      T v = b < 0 ? T(0) : vals[k];
      for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(full, v, off);
      if ((threadIdx.x & 31) == 0) atomicAdd(out + b0 * n + k, v);
    }
  } else if (b >= 0) {
    for (int k = 0; k < n; ++k) atomicAdd(out + b * n + k, vals[k]);
  }
}

template <typename T>
__global__ void shade_backward_kernel(const Inputs<T> in, const Grads<T> g, T* gXc, T* gvn, T* gsrc, T* gsh,
                                      T* gK) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  T acc[9 * kMaxC], kacc[9];
  for (int k = 0; k < 9 * kMaxC; ++k) acc[k] = T(0);
  for (int k = 0; k < 9; ++k) kacc[k] = T(0);
  int64_t b = -1;
  if (i < in.N) {                              // no early return: the whole warp reduces below
    const Outs<T> o{gXc, gvn, gsrc, gsh ? acc : nullptr, gK ? kacc : nullptr};
    Pixel<T> px;
    backward_pixel<T, AtomicAdd>(in, g, o, i, px);
    b = in.view[i];
  }
  if (gsh) add_per_view(acc, static_cast<int>(9 * in.C), b, gsh);
  if (gK) add_per_view(kacc, 9, b, gK);
}

// ---------------------------------------------------------------------------------------
// silhouette (outline.h): one thread per pixel, gathering the outline pairs it is the target of

template <typename T>
__global__ void outline_forward_kernel(const OutlineInputs<T> in, int64_t N, T* __restrict__ raw,
                                       T* __restrict__ sil) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= N) return;
  const int64_t hw = in.H * in.W, b = i / hw, y = (i - b * hw) / in.W, x = i - b * hw - y * in.W;
  raw[i] = outline_pixel(in, b, x, y);
  sil[i] = ff_min(ff_max(raw[i], T(0)), T(1));
}

template <typename T>
__global__ void outline_backward_kernel(const OutlineInputs<T> in, int64_t N, const T* __restrict__ raw,
                                        const T* __restrict__ grad, T* gX, T* gK) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  T kacc[9];
  for (int k = 0; k < 9; ++k) kacc[k] = T(0);
  int64_t b = -1;
  if (i < N) {                                 // no early return: the whole warp reduces below
    const int64_t hw = in.H * in.W;
    b = i / hw;
    const int64_t y = (i - b * hw) / in.W, x = i - b * hw - y * in.W;
    const T g = (raw[i] >= T(0) && raw[i] <= T(1)) ? grad[i] : T(0);   // the clamp
    T* gXb = gX ? gX + b * in.V * 3 : nullptr;
    pairs_into(in, b, x, y, [&](const Pair<T>& r) { pair_backward<T, AtomicAdd>(in, b, r, g, gXb, gK ? kacc : nullptr); });
  }
  if (gK) add_per_view(kacc, 9, b, gK);
}

// ---------------------------------------------------------------------------------------
// vertex normals (pixel.h: add_face_normal, normalise and their backward)

template <typename T>
__global__ void face_normals_add_kernel(const T* __restrict__ X, const int64_t* __restrict__ faces, int64_t B,
                                        int64_t V, int64_t F, T* raw) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= B * F) return;
  const int64_t b = idx / F, f = idx - b * F;
  add_face_normal<T, AtomicAdd>(X + b * V * 3, faces + 3 * f, raw + b * V * 3);
}

template <typename T>
__global__ void normalise_kernel(const T* __restrict__ raw, int64_t n, T eps, T* __restrict__ unit) {
  const int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (v < n) normalise(raw + 3 * v, eps, unit + 3 * v);
}

template <typename T>
__global__ void normalise_backward_kernel(const T* __restrict__ raw, const T* __restrict__ grad, int64_t n, T eps,
                                          T* __restrict__ graw) {
  const int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (v < n) normalise_backward(raw + 3 * v, grad + 3 * v, eps, graw + 3 * v);
}

template <typename T>
__global__ void face_normals_backward_kernel(const T* __restrict__ X, const int64_t* __restrict__ faces,
                                             const T* __restrict__ graw, int64_t B, int64_t V, int64_t F, T* gX) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= B * F) return;
  const int64_t b = idx / F, f = idx - b * F;
  face_normal_backward<T, AtomicAdd>(X + b * V * 3, faces + 3 * f, graw + b * V * 3, gX + b * V * 3);
}

void check_device(const at::Tensor& t, const char* name) {
  TORCH_CHECK(on_device(t) && t.is_contiguous(), name, " must be a contiguous ", kDevice, " tensor");
}

}  // namespace

// zbuf (B*H*W,) int64 z-buffer keys of the visibility pass (0: background); see raster_kernel.
at::Tensor raster_cuda(const at::Tensor& Xc, const at::Tensor& faces, const at::Tensor& K, int64_t H, int64_t W,
                       double near, bool cull_backfaces, bool all_in_front) {
  check_device(Xc, "Xc");
  check_device(faces, "faces");
  check_device(K, "K");
  TORCH_CHECK(Xc.dim() == 3 && Xc.size(2) == 3 && Xc.scalar_type() == at::kFloat, "Xc must be float32 (B, V, 3)");
  TORCH_CHECK(faces.dim() == 2 && faces.size(1) == 3 && faces.scalar_type() == at::kLong, "faces must be int64 (F, 3)");
  TORCH_CHECK(K.dim() == 3 && K.size(0) == Xc.size(0) && K.size(1) == 3 && K.size(2) == 3 &&
                  K.scalar_type() == at::kFloat, "K must be float32 (B, 3, 3)");
  TORCH_CHECK(H > 0 && W > 0 && near > 0.0, "image size and near must be positive");
  const DeviceGuard guard(Xc.device());
  const int64_t B = Xc.size(0), V = Xc.size(1), F = faces.size(0);
  at::Tensor zbuf = at::zeros({B * H * W}, Xc.options().dtype(at::kLong));
  launch(raster_kernel, B * F, Xc.data_ptr<float>(), B, V, faces.data_ptr<int64_t>(), F, K.data_ptr<float>(),
         all_in_front, static_cast<float>(near), static_cast<float>(1.0 / near), cull_backfaces, H, W,
         reinterpret_cast<unsigned long long*>(zbuf.data_ptr<int64_t>()));
  return zbuf;
}

std::vector<at::Tensor> shade_forward_cuda(const at::Tensor& Xc, const at::Tensor& vn, const at::Tensor& Kinv,
                                           const at::Tensor& pix, const at::Tensor& view, const at::Tensor& face,
                                           const at::Tensor& faces, int64_t H, int64_t W, int64_t mode,
                                           const at::Tensor& src, const at::Tensor& vt, const at::Tensor& ft,
                                           const at::Tensor& sh, int64_t C, const std::vector<double>& shc) {
  TORCH_CHECK(on_device(Xc), "the CUDA shading kernel takes ", kDevice, " tensors");
  check_inputs(Xc, vn, Kinv, pix, view, face, faces, H, W, mode, src, vt, ft, sh, C, shc);
  const DeviceGuard guard(Xc.device());
  const int64_t N = pix.size(0);
  const std::vector<at::Tensor> outs = forward_outputs(Xc, N, C);
  const at::Tensor &colour = outs[0], &bary = outs[1], &depth = outs[2], &normals = outs[3], &albedo = outs[4],
                   &shading = outs[5];
  if (N == 0) return outs;
  AT_DISPATCH_FLOATING_TYPES(Xc.scalar_type(), "shade_forward_cuda", [&] {
    const Inputs<scalar_t> in = make_inputs<scalar_t>(Xc, vn, Kinv, pix, view, face, faces, H, W, mode, src, vt,
                                                      ft, sh, C, shc);
    launch(shade_forward_kernel<scalar_t>, N, in, colour.data_ptr<scalar_t>(), bary.data_ptr<scalar_t>(),
           depth.data_ptr<scalar_t>(), normals.data_ptr<scalar_t>(), albedo.data_ptr<scalar_t>(),
           shading.data_ptr<scalar_t>());
  });
  return outs;
}

std::vector<at::Tensor> shade_backward_cuda(const at::Tensor& Xc, const at::Tensor& vn, const at::Tensor& Kinv,
                                            const at::Tensor& pix, const at::Tensor& view, const at::Tensor& face,
                                            const at::Tensor& faces, int64_t H, int64_t W, int64_t mode,
                                            const at::Tensor& src, const at::Tensor& vt, const at::Tensor& ft,
                                            const at::Tensor& sh, int64_t C, const std::vector<double>& shc,
                                            const std::vector<at::Tensor>& grads, const std::vector<bool>& need) {
  TORCH_CHECK(on_device(Xc), "the CUDA shading kernel takes ", kDevice, " tensors");
  check_inputs(Xc, vn, Kinv, pix, view, face, faces, H, W, mode, src, vt, ft, sh, C, shc);
  check_grads(Xc, pix, C, grads, need);
  const DeviceGuard guard(Xc.device());
  const int64_t N = pix.size(0);
  std::vector<at::Tensor> grad_out = gradient_buffers(Xc, vn, src, sh, Kinv, mode, need);
  at::Tensor &gXc = grad_out[0], &gvn = grad_out[1], &gsrc = grad_out[2], &gsh = grad_out[3], &gK = grad_out[4];
  if (N == 0) return grad_out;
  AT_DISPATCH_FLOATING_TYPES(Xc.scalar_type(), "shade_backward_cuda", [&] {
    const Inputs<scalar_t> in = make_inputs<scalar_t>(Xc, vn, Kinv, pix, view, face, faces, H, W, mode, src, vt,
                                                      ft, sh, C, shc);
    auto gp = [&](int k) { return grads[k].numel() > 0 ? grads[k].data_ptr<scalar_t>() : nullptr; };
    const Grads<scalar_t> g{gp(0), gp(1), gp(2), gp(3), gp(4), gp(5)};
    auto op = [](at::Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    launch(shade_backward_kernel<scalar_t>, N, in, g, op(gXc), op(gvn), op(gsrc), op(gsh), op(gK));
  });
  return grad_out;
}

std::vector<at::Tensor> outline_forward_cuda(const at::Tensor& Xc, const at::Tensor& faces, const at::Tensor& Kinv,
                                             const at::Tensor& face, int64_t H, int64_t W) {
  TORCH_CHECK(on_device(Xc), "the CUDA silhouette kernel takes ", kDevice, " tensors");
  check_outline_inputs(Xc, faces, Kinv, face, H, W);
  const DeviceGuard guard(Xc.device());
  const int64_t N = Xc.size(0) * H * W;
  at::Tensor raw = at::empty({N}, Xc.options()), sil = at::empty({N}, Xc.options());
  AT_DISPATCH_FLOATING_TYPES(Xc.scalar_type(), "outline_forward_cuda", [&] {
    launch(outline_forward_kernel<scalar_t>, N, make_outline_inputs<scalar_t>(Xc, faces, Kinv, face, H, W), N,
           raw.data_ptr<scalar_t>(), sil.data_ptr<scalar_t>());
  });
  return {sil, raw};
}

std::vector<at::Tensor> outline_backward_cuda(const at::Tensor& Xc, const at::Tensor& faces, const at::Tensor& Kinv,
                                              const at::Tensor& face, int64_t H, int64_t W, const at::Tensor& raw,
                                              const at::Tensor& grad, bool need_X, bool need_K) {
  TORCH_CHECK(on_device(Xc), "the CUDA silhouette kernel takes ", kDevice, " tensors");
  check_outline_inputs(Xc, faces, Kinv, face, H, W);
  check_outline_grads(Xc, raw, grad);
  const DeviceGuard guard(Xc.device());
  const int64_t N = Xc.size(0) * H * W;
  at::Tensor gX, gK;
  if (need_X) gX = at::zeros(Xc.sizes(), Xc.options());
  if (need_K) gK = at::zeros(Kinv.sizes(), Xc.options());
  if (!need_X && !need_K) return {gX, gK};
  AT_DISPATCH_FLOATING_TYPES(Xc.scalar_type(), "outline_backward_cuda", [&] {
    launch(outline_backward_kernel<scalar_t>, N, make_outline_inputs<scalar_t>(Xc, faces, Kinv, face, H, W), N,
           raw.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), need_X ? gX.data_ptr<scalar_t>() : nullptr,
           need_K ? gK.data_ptr<scalar_t>() : nullptr);
  });
  return {gX, gK};
}

std::vector<at::Tensor> vnormals_forward_cuda(const at::Tensor& verts, const at::Tensor& faces, double eps) {
  check_device(verts, "verts");
  check_device(faces, "faces");
  TORCH_CHECK(verts.dim() == 3 && verts.size(2) == 3 && faces.dim() == 2 && faces.size(1) == 3 &&
                  faces.scalar_type() == at::kLong, "verts (B, V, 3) and int64 faces (F, 3)");
  const DeviceGuard guard(verts.device());
  const int64_t B = verts.size(0), V = verts.size(1), F = faces.size(0);
  at::Tensor raw = at::zeros(verts.sizes(), verts.options()), unit = at::empty(verts.sizes(), verts.options());
  if (B * V == 0) return {unit, raw};
  AT_DISPATCH_FLOATING_TYPES(verts.scalar_type(), "vnormals_forward_cuda", [&] {
    launch(face_normals_add_kernel<scalar_t>, B * F, verts.data_ptr<scalar_t>(), faces.data_ptr<int64_t>(), B, V,
           F, raw.data_ptr<scalar_t>());
    launch(normalise_kernel<scalar_t>, B * V, raw.data_ptr<scalar_t>(), B * V, static_cast<scalar_t>(eps),
           unit.data_ptr<scalar_t>());
  });
  return {unit, raw};
}

at::Tensor vnormals_backward_cuda(const at::Tensor& verts, const at::Tensor& faces, const at::Tensor& raw,
                                  const at::Tensor& grad, double eps) {
  check_device(verts, "verts");
  check_device(faces, "faces");
  check_device(raw, "raw normals");
  check_device(grad, "the normals' gradient");
  TORCH_CHECK(raw.sizes() == verts.sizes() && grad.sizes() == verts.sizes() &&
                  grad.scalar_type() == verts.scalar_type(), "raw normals and gradient must be shaped like verts");
  const DeviceGuard guard(verts.device());
  const int64_t B = verts.size(0), V = verts.size(1), F = faces.size(0);
  at::Tensor gverts = at::zeros(verts.sizes(), verts.options());
  if (B * V == 0 || F == 0) return gverts;
  at::Tensor graw = at::empty(verts.sizes(), verts.options());
  AT_DISPATCH_FLOATING_TYPES(verts.scalar_type(), "vnormals_backward_cuda", [&] {
    launch(normalise_backward_kernel<scalar_t>, B * V, raw.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), B * V,
           static_cast<scalar_t>(eps), graw.data_ptr<scalar_t>());
    launch(face_normals_backward_kernel<scalar_t>, B * F, verts.data_ptr<scalar_t>(), faces.data_ptr<int64_t>(),
           graw.data_ptr<scalar_t>(), B, V, F, gverts.data_ptr<scalar_t>());
  });
  return gverts;
}

}  // namespace flame_fit
