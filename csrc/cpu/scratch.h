// Per-thread reusable scratch buffers for the small problems that run many times (a LossVal step's 32 x 10,000
// cost matrix, ~1 MB, every step). Allocated fresh, such a buffer comes from mmap or from heap memory glibc has just
// returned to the OS, so every call maps and zeroes new pages: measured ~25 % of a 32 x 10,000 divergence.
// Buffers up to kKeepBytes go back to a small per-thread pool on destruction; larger ones (problems whose passes
// dwarf an allocation) are freed as usual.
#pragma once

#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

namespace lvf {
namespace cpu {

template <typename T>
class Scratch {
 public:
  Scratch() = default;
  explicit Scratch(size_t n) { resize(n); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { release(); }

  // n elements, uninitialised when the storage is reused (the caller writes every element it reads)
  void resize(size_t n) {
    if (n <= capacity_) {
      size_ = n;
      return;
    }
    release();
    auto& pool = free_list();
    for (size_t k = 0; k < pool.size(); ++k) {
      if (pool[k].second >= n) {
        data_ = std::move(pool[k].first);
        capacity_ = pool[k].second;
        pool.erase(pool.begin() + long(k));
        size_ = n;
        return;
      }
    }
    data_.reset(new T[n]);
    capacity_ = n;
    size_ = n;
  }

  T* data() { return data_.get(); }
  const T* data() const { return data_.get(); }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }

 private:
  static constexpr size_t kKeepBytes = size_t(16) << 20;
  static constexpr size_t kKeepBuffers = 8;
  using Entry = std::pair<std::unique_ptr<T[]>, size_t>;

  static std::vector<Entry>& free_list() {
    thread_local std::vector<Entry> pool;
    return pool;
  }

  void release() {
    if (data_ && capacity_ * sizeof(T) <= kKeepBytes) {
      auto& pool = free_list();
      if (pool.size() >= kKeepBuffers) pool.erase(pool.begin());  // the oldest goes
      pool.emplace_back(std::move(data_), capacity_);
    }
    data_.reset();
    capacity_ = size_ = 0;
  }

  std::unique_ptr<T[]> data_;
  size_t capacity_ = 0, size_ = 0;
};

}  // namespace cpu
}  // namespace lvf
