// shade_cuda.cu compiled as C++ for the CPU, with cuda_emulation.h standing in for CUDA
// (the build defines FF_CUDA_EMULATION): the CUDA drivers run, and are tested, without a GPU
// (FLAME_FIT_NATIVE_CUDA=emulate; see fitting/render/native/cuda/__init__.py).
//
// Below them, kernels that exercise the emulator itself (tests/render/test_cuda_emulation.py):
// warp shuffles, votes and atomics against known answers, and a kernel that breaks the
// all-lanes rule of warp collectives, which the emulator must report.
#ifndef FF_CUDA_EMULATION
#error "cuda_emulation.cpp is built with -DFF_CUDA_EMULATION (fitting/render/native/cuda/__init__.py)"
#endif

#include "shade_cuda.cu"

namespace flame_fit {
namespace {

constexpr unsigned kFull = 0xffffffffu;

int64_t global_index() { return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; }

// out[w]: the sum of x over warp w (lanes past n add 0), by a shuffle-down tree
__global__ void warp_sums_kernel(const float* x, int64_t n, float* out) {
  const int64_t i = global_index();
  float v = i < n ? x[i] : 0.f;
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(kFull, v, off);
  if ((threadIdx.x & 31) == 0) out[i / 32] = v;
}

// out[i]: x of lane 31 - lane of the same warp (lanes past n post -1)
__global__ void warp_reverse_kernel(const float* x, int64_t n, float* out) {
  const int64_t i = global_index();
  const float v = __shfl_sync(kFull, i < n ? x[i] : -1.f, 31 - static_cast<int>(threadIdx.x & 31));
  if (i < n) out[i] = v;
}

// out[w]: whether every lane of warp w has a non-zero predicate (lanes past n vote yes)
__global__ void warp_all_kernel(const int32_t* p, int64_t n, int32_t* out) {
  const int64_t i = global_index();
  const int all = __all_sync(kFull, i < n ? p[i] : 1);
  if ((threadIdx.x & 31) == 0) out[i / 32] = all;
}

// every thread below n adds 1 to *count and offers its index to *max
__global__ void atomics_kernel(int64_t n, float* count, unsigned long long* max) {
  const int64_t i = global_index();
  if (i >= n) return;
  atomicAdd(count, 1.f);
  atomicMax(max, static_cast<unsigned long long>(i));
}

// wrong on purpose: lanes past n return before a full-mask shuffle
__global__ void early_return_kernel(int64_t n, float* out) {
  const int64_t i = global_index();
  if (i >= n) return;
  out[i] = __shfl_down_sync(kFull, 1.f, 1);
}

int64_t warps_for(int64_t n) { return static_cast<int64_t>(blocks_for(n)) * kThreads / 32; }

}  // namespace

std::vector<at::Tensor> emulator_check(const at::Tensor& x, const at::Tensor& p, bool early_return) {
  TORCH_CHECK(x.is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 1 && x.is_contiguous(), "x: float32 (n,)");
  TORCH_CHECK(p.is_cpu() && p.scalar_type() == at::kInt && p.sizes() == x.sizes() && p.is_contiguous(), "p: int32 (n,)");
  const int64_t n = x.size(0);
  at::Tensor sums = at::zeros({warps_for(n)}, x.options()), reversed = at::zeros(x.sizes(), x.options());
  at::Tensor all = at::zeros({warps_for(n)}, p.options()), count = at::zeros({1}, x.options());
  at::Tensor max = at::zeros({1}, x.options().dtype(at::kLong));
  if (early_return) {
    launch(early_return_kernel, n, n, reversed.data_ptr<float>());
    return {};
  }
  launch(warp_sums_kernel, n, x.data_ptr<float>(), n, sums.data_ptr<float>());
  launch(warp_reverse_kernel, n, x.data_ptr<float>(), n, reversed.data_ptr<float>());
  launch(warp_all_kernel, n, p.data_ptr<int32_t>(), n, all.data_ptr<int32_t>());
  launch(atomics_kernel, n, n, count.data_ptr<float>(), reinterpret_cast<unsigned long long*>(max.data_ptr<int64_t>()));
  return {sums, reversed, all, count, max};
}

}  // namespace flame_fit
