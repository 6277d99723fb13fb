// Run-time choice of the CPU kernel table: the widest instruction set this CPU supports, overridable (for tests
// and benchmarks) by set_capability() or the LOSSVAL_FAST_CPU_CAPABILITY environment variable.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels.h"

namespace lvf {
namespace cpu {

#define LVF_DECLARE_TABLES(ns)                 \
  namespace ns {                               \
  const KernelTable<float>& table_f32();       \
  const KernelTable<double>& table_f64();      \
  }
LVF_DECLARE_TABLES(cap_generic)
LVF_DECLARE_TABLES(cap_avx2)
LVF_DECLARE_TABLES(cap_avx512)
#undef LVF_DECLARE_TABLES

namespace {

enum Capability : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2, kUnset = -1 };
const char* const kNames[] = {"generic", "avx2", "avx512"};

Capability detect() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl"))
    return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
  return kGeneric;
}

Capability parse(const char* name) {
  const Capability best = detect();
  if (name == nullptr || std::strcmp(name, "") == 0 || std::strcmp(name, "auto") == 0) return best;
  for (int c = 0; c < 3; ++c)
    if (std::strcmp(name, kNames[c]) == 0) {
      if (c > best)
        throw std::invalid_argument(std::string("cpu capability '") + name + "' is not supported by this CPU (best: " +
                                    kNames[best] + ")");
      return Capability(c);
    }
  throw std::invalid_argument(std::string("unknown cpu capability '") + name + "': expected auto, generic, avx2 or avx512");
}

std::atomic<int> current{kUnset};

Capability active() {
  int c = current.load(std::memory_order_relaxed);
  if (c == kUnset) {
    c = parse(std::getenv("LOSSVAL_FAST_CPU_CAPABILITY"));
    current.store(c, std::memory_order_relaxed);
  }
  return Capability(c);
}

}  // namespace

const char* set_capability(const char* name) {
  current.store(parse(name), std::memory_order_relaxed);
  return kNames[active()];
}
const char* capability() { return kNames[active()]; }
const char* best_capability() { return kNames[detect()]; }

const KernelTable<float>& kernels_f32() {
  switch (active()) {
    case kAvx512: return cap_avx512::table_f32();
    case kAvx2: return cap_avx2::table_f32();
    default: return cap_generic::table_f32();
  }
}
const KernelTable<double>& kernels_f64() {
  switch (active()) {
    case kAvx512: return cap_avx512::table_f64();
    case kAvx2: return cap_avx2::table_f64();
    default: return cap_generic::table_f64();
  }
}

}  // namespace cpu
}  // namespace lvf
