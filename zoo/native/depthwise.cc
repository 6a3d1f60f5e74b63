// The kernel gradient of a depthwise convolution (channel multiplier 1) on the CPU, as an
// XLA FFI custom call: one pass over the input and dy that accumulates all
// kh * kw taps at once, where XLA:CPU reads the activations once per tap (it has no
// fusion that computes nine sums in one pass). The layout and the result are those of
// zoo.conv._shift_kernel_grad: x (N, H, W, C), dy (N, OH, OW, C), out (KH, KW, C); the
// input's top and left pads are attributes (taps outside the image add nothing).
//
// Built by zoo/native/__init__.py with the system C++ compiler against the FFI headers of
// the installed jaxlib; float32 only.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Geometry {
  int64_t n, h, w, c, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl;
};

// Channels [c0, c0 + CB) of output columns [ow0, ow1) of one output row, every tap inside
// the image, with the KH*KW*CB accumulators in registers (KH, KW, CB known at compile time).
template <int KH, int KW, int CB>
inline void RowBlock(const Geometry& g, const float* const* xrows, const float* dyrow,
                     int64_t c0, int64_t ow0, int64_t ow1, float* acc) {
  float a[KH * KW][CB];
  for (int t = 0; t < KH * KW; ++t)
    for (int c = 0; c < CB; ++c) a[t][c] = acc[t * g.c + c0 + c];
  for (int64_t ow = ow0; ow < ow1; ++ow) {
    const float* d = dyrow + ow * g.c + c0;
    const int64_t col = ow * g.sw - g.pl;
    for (int i = 0; i < KH; ++i) {
      for (int j = 0; j < KW; ++j) {
        const float* xp = xrows[i] + (col + j * g.dw) * g.c + c0;
#pragma GCC ivdep
        for (int c = 0; c < CB; ++c) a[i * KW + j][c] += xp[c] * d[c];
      }
    }
  }
  for (int t = 0; t < KH * KW; ++t)
    for (int c = 0; c < CB; ++c) acc[t * g.c + c0 + c] = a[t][c];
}

// Any kernel size, channels [c0, c1) of output columns [ow0, ow1), taps outside the image
// skipped; accumulators in memory.
inline void RowGeneric(const Geometry& g, const float* const* xrows, const float* dyrow,
                       int64_t c0, int64_t c1, int64_t ow0, int64_t ow1, float* acc) {
  for (int64_t ow = ow0; ow < ow1; ++ow) {
    const float* d = dyrow + ow * g.c;
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t col = ow * g.sw - g.pl + j * g.dw;
      if (col < 0 || col >= g.w) continue;
      for (int64_t i = 0; i < g.kh; ++i) {
        const float* xp = xrows[i] + col * g.c;
        float* at = acc + (i * g.kw + j) * g.c;
#pragma GCC ivdep
        for (int64_t c = c0; c < c1; ++c) at[c] += xp[c] * d[c];
      }
    }
  }
}

constexpr int kBlock = 32;

// Rows [r0, r1) of the flattened (n, oh) output rows into acc (KH * KW * C). A tap row
// outside the image reads `zeros` (one row of W * C zeros).
void Rows(const Geometry& g, const float* x, const float* dy, int64_t r0, int64_t r1,
          const float* zeros, float* acc) {
  std::vector<const float*> xrows(g.kh);
  const int64_t blocked = (g.kh == 3 && g.kw == 3) ? g.c / kBlock * kBlock : 0;
  // output columns whose every tap is inside the image: [lo, hi)
  const int64_t lo = std::min(g.ow, (g.pl + g.sw - 1) / g.sw);
  const int64_t last = g.w - 1 - (g.kw - 1) * g.dw + g.pl;  // largest ow * sw allowed
  const int64_t hi = std::max(lo, std::min(g.ow, last < 0 ? 0 : last / g.sw + 1));
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / g.oh, oh = r % g.oh;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t row = oh * g.sh - g.pt + i * g.dh;
      xrows[i] = (row < 0 || row >= g.h) ? zeros : x + (n * g.h + row) * g.w * g.c;
    }
    const float* dyrow = dy + r * g.ow * g.c;
    for (int64_t c0 = 0; c0 < blocked; c0 += kBlock)
      RowBlock<3, 3, kBlock>(g, xrows.data(), dyrow, c0, lo, hi, acc);
    if (blocked < g.c) RowGeneric(g, xrows.data(), dyrow, blocked, g.c, lo, hi, acc);
    RowGeneric(g, xrows.data(), dyrow, 0, g.c, 0, lo, acc);
    RowGeneric(g, xrows.data(), dyrow, 0, g.c, hi, g.ow, acc);
  }
}

// Work shared by the caller and the pool's threads: chunks of rows taken from a counter,
// each worker summing into its own accumulators, merged into out under a lock. The caller
// waits only for chunks some thread has taken, so a task the pool starts late finds no
// chunk and touches nothing (the state is shared, the output is not).
struct Shared {
  Geometry g;
  const float* x;
  const float* dy;
  float* out;
  int64_t rows, chunk, chunks;
  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::condition_variable done;
  int64_t finished = 0;  // chunks merged into out, under mu
};

void Work(const std::shared_ptr<Shared>& s) {
  std::vector<float> acc, zeros;
  int64_t taken = 0;
  for (int64_t k; (k = s->next.fetch_add(1)) < s->chunks; ++taken) {
    if (acc.empty()) {
      acc.assign(s->g.kh * s->g.kw * s->g.c, 0.0f);
      zeros.assign(s->g.w * s->g.c, 0.0f);
    }
    Rows(s->g, s->x, s->dy, k * s->chunk, std::min(s->rows, (k + 1) * s->chunk), zeros.data(),
         acc.data());
  }
  if (taken == 0) return;
  std::lock_guard<std::mutex> lock(s->mu);
  for (size_t t = 0; t < acc.size(); ++t) s->out[t] += acc[t];
  s->finished += taken;
  if (s->finished == s->chunks) s->done.notify_all();
}

ffi::Error DepthwiseKernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                               ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> out,
                               int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh,
                               int64_t dw, int64_t pt, int64_t pl) {
  auto xd = x.dimensions(), dyd = dy.dimensions();
  if (xd.size() != 4 || dyd.size() != 4 || xd[0] != dyd[0] || xd[3] != dyd[3])
    return ffi::Error::InvalidArgument("depthwise kernel grad: x (N,H,W,C), dy (N,OH,OW,C)");
  auto s = std::make_shared<Shared>();
  s->g = Geometry{xd[0], xd[1], xd[2], xd[3], dyd[1], dyd[2], kh, kw, sh, sw, dh, dw, pt, pl};
  if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1 || pt < 0 || pl < 0)
    return ffi::Error::InvalidArgument("depthwise kernel grad: bad kernel, strides or pads");
  s->x = x.typed_data();
  s->dy = dy.typed_data();
  s->out = out->typed_data();
  std::fill(s->out, s->out + kh * kw * s->g.c, 0.0f);
  s->rows = s->g.n * s->g.oh;
  if (s->rows == 0 || s->g.ow == 0) return ffi::Error::Success();
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  s->chunks = std::min<int64_t>(s->rows, 8 * threads);
  s->chunk = (s->rows + s->chunks - 1) / s->chunks;
  s->chunks = (s->rows + s->chunk - 1) / s->chunk;
  for (int64_t t = 1; t < threads; ++t) pool.Schedule([s] { Work(s); });
  Work(s);
  std::unique_lock<std::mutex> lock(s->mu);
  s->done.wait(lock, [&] { return s->finished == s->chunks; });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooDepthwiseKernelGrad, DepthwiseKernelGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("dh")
                                  .Attr<int64_t>("dw")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pl"));
