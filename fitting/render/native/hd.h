// What the headers shared by the CPU and CUDA kernels (raster.h, pixel.h, outline.h) need to
// compile as host and device code: FF_INLINE, min / max / sqrt that mean the same on both, and
// the 3-vector cross and dot products.
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

// 3-vectors as pointers to 3 values
template <typename T>
FF_INLINE void cross(const T* a, const T* b, T* o) {
  o[0] = a[1] * b[2] - a[2] * b[1];
  o[1] = a[2] * b[0] - a[0] * b[2];
  o[2] = a[0] * b[1] - a[1] * b[0];
}

template <typename T>
FF_INLINE T dot(const T* a, const T* b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }

}  // namespace flame_fit
