// A CPU stand-in for the parts of CUDA that shade_cuda.cu uses, so that its drivers (grid
// indexing, launch sizes, atomics, the warp reduction of add_per_view, the host glue around
// the kernels) run, and are tested, on machines without a GPU. cuda_emulation.cpp compiles
// shade_cuda.cu as plain C++ with this header; FLAME_FIT_NATIVE_CUDA=emulate sends CPU
// tensors through it (fitting/render/native/cuda/__init__.py).
//
// The model: a launch runs its blocks, and each block's warps, one after another; the 32
// lanes of a warp run at the same time, as 32 threads. So warp collectives (__shfl_sync,
// __shfl_down_sync, __all_sync) exchange values as lanes in lockstep do, and atomics are real
// atomic read-modify-writes that race as on a GPU. A full-mask collective that not every lane
// reaches (some returned early: undefined behaviour on a GPU), a partial mask, or a launch of
// zero blocks (rejected by CUDA) fails the launch with an error.
//
// Not modelled: memory spaces, timing, races between warps, nvcc's code generation (float
// maths rounds as the host compiler rounds it), lanes of one warp that diverge into two
// different collectives.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__

// CUDA's built-in thread coordinates, one set per lane thread
struct EmulatedDim3 {
  unsigned x = 0, y = 1, z = 1;
};
inline thread_local EmulatedDim3 threadIdx, blockIdx, blockDim;

namespace flame_fit {
namespace emulation {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr const char* kDevice = "CPU (CUDA emulation)";

inline bool on_device(const at::Tensor& t) { return t.is_cpu(); }

struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};

// The warp being run: a barrier over its lanes still inside the kernel, and the slots that
// collectives exchange values through.
class Warp {
 public:
  // Every lane inside the kernel posts v and receives what lane src posted.
  template <typename T>
  T exchange(int lane, T v, int src) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= sizeof(uint64_t),
                  "warp collectives exchange values of at most 8 bytes");
    std::unique_lock<std::mutex> lock(mutex_);
    uint64_t* slots = post(lane);
    std::memcpy(&slots[lane], &v, sizeof(T));
    sync(lock);
    T out;
    std::memcpy(&out, &slots[src], sizeof(T));
    return out;
  }

  // Every lane inside the kernel posts a predicate; true when all lanes' are.
  bool all(int lane, bool predicate) {
    std::unique_lock<std::mutex> lock(mutex_);
    uint64_t* slots = post(lane);
    slots[lane] = predicate ? 1 : 0;
    sync(lock);
    bool out = true;
    for (int k = 0; k < kWarpSize; ++k) out = out && slots[k] != 0;
    return out;
  }

  // This lane returned from the kernel. Waits for the warp's other lanes; then the next warp
  // of the launch starts with all 32 lanes.
  void finish() {
    std::unique_lock<std::mutex> lock(mutex_);
    --running_;
    if (arrived_ > 0 && arrived_ == running_) release();   // the lanes waiting in a collective go on
    const uint64_t warp = warp_.load();
    if (++finished_ == kWarpSize) {
      finished_ = 0;
      running_ = kWarpSize;
      warp_.fetch_add(1);
      return;
    }
    wait_for_change(lock, warp_, warp);
  }

  void fail(const std::string& why) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (error_.empty()) error_ = why;
  }

  const std::string& error() const { return error_; }   // read after the launch's threads joined

 private:
  // This collective's slots, cleared for the lane. Collectives alternate between two banks,
  // so one barrier per collective is enough: a lane can post into a bank again only after
  // every lane has passed the next barrier, i.e. has read it.
  uint64_t* post(int lane) {
    uint64_t* slots = slots_[phase_.load() & 1];
    slots[lane] = 0;
    return slots;
  }

  // barrier over the lanes still inside the kernel
  void sync(std::unique_lock<std::mutex>& lock) {
    const uint64_t phase = phase_.load();
    if (++arrived_ == running_) {
      release();
      return;
    }
    wait_for_change(lock, phase_, phase);
  }

  // Unlocks, yields until counter moves on from seen, locks again. Yielding, not a condition
  // variable: 32 lanes on a few cores pass a barrier several times faster this way.
  static void wait_for_change(std::unique_lock<std::mutex>& lock, const std::atomic<uint64_t>& counter,
                              uint64_t seen) {
    lock.unlock();
    while (counter.load() == seen) std::this_thread::yield();
    lock.lock();
  }

  // A collective completes: every lane inside the kernel has posted. With the full mask,
  // that must be all 32.
  void release() {
    if (running_ != kWarpSize && error_.empty())
      error_ = "a full-mask warp collective was reached by " + std::to_string(running_) +
               " of 32 lanes (the others had returned: undefined behaviour on a GPU)";
    arrived_ = 0;
    phase_.fetch_add(1);
  }

  std::mutex mutex_;   // guards everything below; phase_ and warp_ are also read while waiting
  int running_ = kWarpSize, arrived_ = 0, finished_ = 0;
  std::atomic<uint64_t> phase_{0}, warp_{0};
  uint64_t slots_[2][kWarpSize] = {};
  std::string error_;
};

inline thread_local Warp* current_warp = nullptr;
inline thread_local int current_lane = 0;

inline Warp& warp_for_collective(unsigned mask) {
  TORCH_CHECK(current_warp != nullptr, "a warp collective outside an emulated kernel launch");
  if (mask != kFullMask) current_warp->fail("only full-mask warp collectives are emulated");
  return *current_warp;
}

// Runs body() as every thread of a grid of `blocks` blocks of `threads` threads (a multiple of
// the warp size), the 32 lanes of each warp concurrently (see the file comment). Throws the
// first error a lane raised or the emulator found.
template <typename Body>
void launch(unsigned blocks, unsigned threads, const Body& body) {
  TORCH_CHECK(blocks > 0, "invalid launch configuration: zero blocks (CUDA rejects it)");
  TORCH_CHECK(threads > 0 && threads % kWarpSize == 0 && threads <= 1024,
              "the emulator runs blocks of whole warps, at most 1024 threads");
  Warp warp;
  std::vector<std::thread> lanes;
  lanes.reserve(kWarpSize);
  for (int lane = 0; lane < kWarpSize; ++lane) {
    lanes.emplace_back([&, lane] {
      current_warp = &warp;
      current_lane = lane;
      blockDim.x = threads;
      for (unsigned b = 0; b < blocks; ++b) {
        for (unsigned w = 0; w < threads / kWarpSize; ++w) {
          blockIdx.x = b;
          threadIdx.x = w * kWarpSize + lane;
          try {
            body();
          } catch (const std::exception& e) {
            warp.fail(e.what());
          } catch (...) {
            warp.fail("unknown exception in an emulated kernel");
          }
          warp.finish();
        }
      }
      current_warp = nullptr;
    });
  }
  for (auto& t : lanes) t.join();
  TORCH_CHECK(warp.error().empty(), "emulated CUDA launch failed: ", warp.error());
}

template <typename T>
struct SameSizeInt;
template <>
struct SameSizeInt<float> {
  using type = uint32_t;
};
template <>
struct SameSizeInt<double> {
  using type = uint64_t;
};

}  // namespace emulation
}  // namespace flame_fit

// ---- CUDA's device functions used by shade_cuda.cu -------------------------------------

template <typename T>
T atomicAdd(T* p, T v) {
  using U = typename flame_fit::emulation::SameSizeInt<T>::type;
  U* bits = reinterpret_cast<U*>(p);
  U seen = __atomic_load_n(bits, __ATOMIC_RELAXED), next;
  T old;
  do {
    std::memcpy(&old, &seen, sizeof(T));
    const T sum = old + v;
    std::memcpy(&next, &sum, sizeof(T));
  } while (!__atomic_compare_exchange_n(bits, &seen, next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return old;
}

inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
  unsigned long long seen = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (seen < v && !__atomic_compare_exchange_n(p, &seen, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return seen;
}

template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane) {
  using namespace flame_fit::emulation;
  return warp_for_collective(mask).exchange(current_lane, v, src_lane & (kWarpSize - 1));
}

template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta) {
  using namespace flame_fit::emulation;
  const int src = current_lane + static_cast<int>(delta);
  return warp_for_collective(mask).exchange(current_lane, v, src < kWarpSize ? src : current_lane);
}

inline int __all_sync(unsigned mask, int predicate) {
  using namespace flame_fit::emulation;
  return warp_for_collective(mask).all(current_lane, predicate != 0) ? 1 : 0;
}
