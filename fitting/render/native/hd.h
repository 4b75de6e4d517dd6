// What the headers shared by the CPU and CUDA kernels (raster.h, pixel.h) need to
// compile as host and device code: FF_INLINE and min / max / sqrt that mean the same on both.
#pragma once

#include <cmath>

#ifdef __CUDACC__
#define FF_INLINE __host__ __device__ __forceinline__
#else
#define FF_INLINE inline __attribute__((always_inline))
#endif

namespace flame_fit {

// std::min / std::max semantics (the first argument on ties and NaN comparisons)
template <typename T>
FF_INLINE T ff_min(T a, T b) { return b < a ? b : a; }
template <typename T>
FF_INLINE T ff_max(T a, T b) { return a < b ? b : a; }
FF_INLINE float ff_sqrt(float x) { return sqrtf(x); }
FF_INLINE double ff_sqrt(double x) { return sqrt(x); }

}  // namespace flame_fit
