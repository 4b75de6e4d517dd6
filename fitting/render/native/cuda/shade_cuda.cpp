// Python bindings of the CUDA drivers in shade_cuda.cu (kept out of the .cu file so nvcc never
// compiles pybind11). The functions mirror the CPU modules: forward / backward /
// vnormals_forward / vnormals_backward as shade.cpp, and raster, the CUDA visibility pass. The
// CPU emulation build (FF_CUDA_EMULATION) adds emulator_check, the emulator's self-checks.
#include <ATen/core/Tensor.h>
#include <torch/csrc/utils/pybind.h>

#include <vector>

namespace flame_fit {
at::Tensor raster_cuda(const at::Tensor& Xc, const at::Tensor& faces, const at::Tensor& K, int64_t H, int64_t W,
                       double near, bool cull_backfaces, bool all_in_front);
std::vector<at::Tensor> shade_forward_cuda(const at::Tensor& Xc, const at::Tensor& vn, const at::Tensor& Kinv,
                                           const at::Tensor& pix, const at::Tensor& view, const at::Tensor& face,
                                           const at::Tensor& faces, int64_t H, int64_t W, int64_t mode,
                                           const at::Tensor& src, const at::Tensor& vt, const at::Tensor& ft,
                                           const at::Tensor& sh, int64_t C, const std::vector<double>& shc);
std::vector<at::Tensor> shade_backward_cuda(const at::Tensor& Xc, const at::Tensor& vn, const at::Tensor& Kinv,
                                            const at::Tensor& pix, const at::Tensor& view, const at::Tensor& face,
                                            const at::Tensor& faces, int64_t H, int64_t W, int64_t mode,
                                            const at::Tensor& src, const at::Tensor& vt, const at::Tensor& ft,
                                            const at::Tensor& sh, int64_t C, const std::vector<double>& shc,
                                            const std::vector<at::Tensor>& grads, const std::vector<bool>& need);
std::vector<at::Tensor> outline_forward_cuda(const at::Tensor& Xc, const at::Tensor& faces, const at::Tensor& Kinv,
                                             const at::Tensor& face, int64_t H, int64_t W);
std::vector<at::Tensor> outline_backward_cuda(const at::Tensor& Xc, const at::Tensor& faces, const at::Tensor& Kinv,
                                              const at::Tensor& face, int64_t H, int64_t W, const at::Tensor& raw,
                                              const at::Tensor& grad, bool need_X, bool need_K);
std::vector<at::Tensor> vnormals_forward_cuda(const at::Tensor& verts, const at::Tensor& faces, double eps);
at::Tensor vnormals_backward_cuda(const at::Tensor& verts, const at::Tensor& faces, const at::Tensor& raw,
                                  const at::Tensor& grad, double eps);
#ifdef FF_CUDA_EMULATION
std::vector<at::Tensor> emulator_check(const at::Tensor& x, const at::Tensor& p, bool early_return);
#endif
}  // namespace flame_fit

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace flame_fit;
  m.doc() = "CUDA visibility pass and fused per-pixel shading chain of fitting.render (forward and backward)";
  m.def("raster", &raster_cuda,
        "(Xc, faces, K, H, W, near, cull_backfaces, all_in_front) -> z-buffer keys (B*H*W,) int64, 0 = background");
  m.def("forward", &shade_forward_cuda,
        "(Xc, vn, Kinv, pix, view, face, faces, H, W, mode, src, vt, ft, sh, C, shc) -> "
        "[colour, bary, depth, normals, albedo, shading]");
  m.def("backward", &shade_backward_cuda,
        "(same inputs..., grads[6], need[5]) -> [gXc, gvn, gsrc, gsh, gKinv] (None where not needed)");
  m.def("outline_forward", &outline_forward_cuda,
        "(Xc, faces, Kinv (B, 9), face (B*H*W,), H, W) -> [silhouette, raw] (B*H*W,): antialiased coverage");
  m.def("outline_backward", &outline_backward_cuda,
        "(Xc, faces, Kinv, face, H, W, raw, grad, need_X, need_K) -> [gXc, gKinv] (None where not needed)");
  m.def("vnormals_forward", &vnormals_forward_cuda, "(verts (B, V, 3), faces (F, 3), eps) -> [unit, raw]");
  m.def("vnormals_backward", &vnormals_backward_cuda, "(verts, faces, raw, grad, eps) -> grad verts");
#ifdef FF_CUDA_EMULATION
  m.def("emulator_check", &emulator_check,
        "(x float32 (n,), p int32 (n,), early_return) -> [warp sums, x reversed within warps, warp all(p), "
        "count, max index] from emulated shuffles, votes and atomics (cuda_emulation.cpp)");
#endif
}
