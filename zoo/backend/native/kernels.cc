// Native CPU kernels called from XLA as FFI custom calls (float32, NHWC), the input's
// padding handled inside (taps outside the image are skipped), so no padded copy of an
// activation is ever written:
//
// - ZooDepthwiseForward: y (N, OH, OW, C) = sum over taps of window(x) * k, x (N, H, W, C),
//   k (KH, KW, C) (channel multiplier 1). Also the input gradient at stride 1: dy with the
//   flipped kernel.
// - ZooDepthwiseKernelGrad: dk (KH, KW, C) = sum over batch and space of window(x) * dy,
//   all taps in one pass over x and dy, where XLA:CPU reads the activations once per tap
//   (it has no fusion that computes nine sums in one pass).
// - ZooMaxPool, ZooMaxPoolGrad: max pooling (padding -inf) and its gradient, which goes
//   to each window's first maximum in row-major order, in one pass (XLA:CPU: two 1-D
//   passes, each writing padded views).
// - ZooConv: y (N, OH, OW, CO) = a dense convolution of x (N, H, W, C) with k (KH, KW, C,
//   CO) (column stride 1 or 2, no dilation): blocks of output columns x output channels
//   in registers, for layers with few kernel values per output (stems, 3x3 convs on up to
//   128 channels), where XLA:CPU's convolution runs at a third to a half of the matrix
//   product's speed. Also the input gradient at stride 1 (dy with the flipped kernel).
// - ZooConvKernelGrad: its kernel gradient dk (KH, KW, C, CO) in one pass over x and dy.
// - ZooDepthwiseForwardAct, ZooMaxPoolAct: the depthwise forward and the max pool of an
//   activated input, clip((x - center) * scale + shift, lo, hi) per channel (an inference
//   batch norm and a ReLU / ReLU6), applied to each input row as it is read (Act, ActRows).
//
// 3x3 depthwise convolutions and the dense ones use explicit SIMD vectors (GCC/Clang
// vector extensions) so that the register blocks stay in registers whatever the compiler's
// tuning for the CPU (GCC's for recent Xeons prefers 256-bit vectors and spilled them).
//
// The results are those of zoo.backend.conv's XLA formulations (_shift_views_forward,
// _shift_kernel_grad, _separable_max_pool and its gradient, padded_xla_conv and its
// gradients) up to float32 summation order.
// Built by zoo/native/__init__.py with the system C++ compiler against the FFI headers of
// the installed jaxlib. Work is split over rows (images, for the max-pool gradient) of the
// output between the calling thread and XLA's intra-op thread pool.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Geometry {
  int64_t n, h, w, c, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl;

  // Output columns whose every tap is inside the image: [lo, hi).
  int64_t lo() const { return std::min(ow, (pl + sw - 1) / sw); }
  int64_t hi() const {
    const int64_t last = w - 1 - (kw - 1) * dw + pl;  // largest ow * sw allowed
    return std::max(lo(), std::min(ow, last < 0 ? 0 : last / sw + 1));
  }
  // The input row (in the image or not) of tap row i of output row o.
  int64_t InputRow(int64_t o, int64_t i) const { return o * sh - pt + i * dh; }
  // The kh input rows of output row r = (n, oh); `zeros` (a row of w * c zeros) outside.
  void Rows(const float* x, int64_t r, const float* zeros, const float** rows) const {
    const int64_t b = r / oh, o = r % oh;
    for (int64_t i = 0; i < kh; ++i) {
      const int64_t row = InputRow(o, i);
      rows[i] = (row < 0 || row >= h) ? zeros : x + (b * h + row) * w * c;
    }
  }
};

// ---- input activation ------------------------------------------------------------------

// A per-channel activation of the input, applied to each value as it is read:
// clip((x - center) * scale + shift, lo, hi) (an inference batch norm and a ReLU or ReLU6
// before a depthwise conv or a max pool), so that XLA never writes the activated tensor.
// The padding is that of the activated input (taps outside are still skipped).
struct Act {
  const float *center = nullptr, *scale = nullptr, *shift = nullptr;
  float lo = 0.0f, hi = 0.0f;

  // The w pixels of one input row (w * c values), activated into `out`.
  void Row(const float* x, int64_t w, int64_t c, float* out) const {
    for (int64_t p = 0; p < w; ++p, x += c, out += c) {
#pragma GCC ivdep
      for (int64_t k = 0; k < c; ++k)
        out[k] = std::min(std::max((x[k] - center[k]) * scale[k] + shift[k], lo), hi);
    }
  }
};

// Activated input rows of one thread, by input row (b * h + row): a ring of `slots` rows,
// enough for every tap row of one output row (consecutive output rows of a chunk share
// most of them, so each input row is activated about once per chunk). Each row has `left`
// and `right` pixels of zeros around it (the padding), so that a convolution reads every
// output column through its inner loop; Zeros() is such a row of zeros (outside the image).
class ActRows {
 public:
  ActRows(const Act& act, const float* x, int64_t w, int64_t c, int64_t slots, int64_t left = 0,
          int64_t right = 0)
      : act_(act), x_(x), w_(w), c_(c), stride_((left + w + right) * c), left_(left * c),
        buf_((slots + 1) * stride_, 0.0f), tag_(slots, -1) {}

  const float* Get(int64_t key) {
    const int64_t s = key % static_cast<int64_t>(tag_.size());
    float* p = buf_.data() + s * stride_ + left_;
    if (tag_[s] != key) {
      act_.Row(x_ + key * w_ * c_, w_, c_, p);
      tag_[s] = key;
    }
    return p;
  }
  const float* Zeros() const { return buf_.data() + tag_.size() * stride_ + left_; }

 private:
  const Act act_;
  const float* x_;
  int64_t w_, c_, stride_, left_;
  std::vector<float> buf_;
  std::vector<int64_t> tag_;
};

constexpr int kBlock = 32;  // channels kept in registers per pass (two AVX-512 vectors)

// Explicit SIMD vectors (GCC/Clang vector extensions: any ISA). The widest the target has,
// so that -march=native on a CPU whose compiler tuning prefers 256-bit auto-vectorisation
// (GCC on recent Intel Xeons) still uses AVX-512 registers; loads and stores unaligned.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
typedef float VecW __attribute__((vector_size(kLanes * sizeof(float))));
typedef float VecH __attribute__((vector_size(kLanes * sizeof(float) / 2)));

template <typename V>
inline V Load(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V>
inline void Store(float* p, V v) {
  __builtin_memcpy(p, &v, sizeof(V));
}

// ---- forward -------------------------------------------------------------------------

// Channels [c0, c0 + CB) of output columns [ow0, ow1) of one row, every tap inside the
// image, the KH*KW*CB weights in registers.
template <int KH, int KW, int CB>
inline void ForwardBlock(const Geometry& g, const float* const* xrows, const float* k,
                         float* yrow, int64_t c0, int64_t ow0, int64_t ow1) {
  float wt[KH * KW][CB];
  for (int t = 0; t < KH * KW; ++t)
    for (int c = 0; c < CB; ++c) wt[t][c] = k[t * g.c + c0 + c];
  for (int64_t ow = ow0; ow < ow1; ++ow) {
    const int64_t col = ow * g.sw - g.pl;
    float a[CB] = {};
    for (int i = 0; i < KH; ++i) {
      for (int j = 0; j < KW; ++j) {
        const float* xp = xrows[i] + (col + j * g.dw) * g.c + c0;
#pragma GCC ivdep
        for (int c = 0; c < CB; ++c) a[c] += xp[c] * wt[i * KW + j][c];
      }
    }
    float* yp = yrow + ow * g.c + c0;
    for (int c = 0; c < CB; ++c) yp[c] = a[c];
  }
}

// 3x3, dilation 1, stride SW: output columns [ow, ow + B) of one row for channels
// [c, c + lanes of V), every tap inside the image. Each input vector loaded serves up to
// three outputs (B + 2 loads per kernel row at stride 1, where one output at a time
// loads 9 per output); accumulators and the 9 weights stay in registers.
template <typename V, int SW, int B>
inline void Forward3x3Cols(const Geometry& g, const float* const* xrows, const float* k,
                           float* yrow, int64_t ow, int64_t c) {
  constexpr int kIn = (B - 1) * SW + 3;
  const int64_t col0 = ow * SW - g.pl;
  V w[9];
  for (int t = 0; t < 9; ++t) w[t] = Load<V>(k + t * g.c + c);
  V acc[B];
  for (int b = 0; b < B; ++b) acc[b] = V{};
  for (int i = 0; i < 3; ++i) {
    const float* xp = xrows[i] + col0 * g.c + c;
    V in[kIn];
    for (int q = 0; q < kIn; ++q) in[q] = Load<V>(xp + q * g.c);
    for (int b = 0; b < B; ++b)
      for (int j = 0; j < 3; ++j) acc[b] += in[b * SW + j] * w[i * 3 + j];
  }
  for (int b = 0; b < B; ++b) Store<V>(yrow + (ow + b) * g.c + c, acc[b]);
}

// Any kernel size, channels [c0, c1), output columns [ow0, ow1), taps outside skipped.
inline void ForwardGeneric(const Geometry& g, const float* const* xrows, const float* k,
                           float* yrow, int64_t c0, int64_t c1, int64_t ow0, int64_t ow1) {
  for (int64_t ow = ow0; ow < ow1; ++ow) {
    float* yp = yrow + ow * g.c;
    for (int64_t c = c0; c < c1; ++c) yp[c] = 0.0f;
    for (int64_t i = 0; i < g.kh; ++i) {
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t col = ow * g.sw - g.pl + j * g.dw;
        if (col < 0 || col >= g.w) continue;
        const float* xp = xrows[i] + col * g.c;
        const float* kp = k + (i * g.kw + j) * g.c;
#pragma GCC ivdep
        for (int64_t c = c0; c < c1; ++c) yp[c] += xp[c] * kp[c];
      }
    }
  }
}

// Output columns [ow0, ow1) of one row, all channels, every tap inside the image: blocks
// of B columns (then single columns) through full vectors, then a half vector, then the
// generic loop for the channels left.
template <int SW, int B>
void Forward3x3Row(const Geometry& g, const float* const* xrows, const float* k, float* yrow,
                   int64_t ow0, int64_t ow1) {
  constexpr int64_t kW = sizeof(VecW) / sizeof(float), kH = sizeof(VecH) / sizeof(float);
  const int64_t full = g.c / kW * kW;
  const bool half = g.c - full >= kH;
  const int64_t vec = full + (half ? kH : 0);
  int64_t ow = ow0;
  for (; ow + B <= ow1; ow += B) {
    for (int64_t c = 0; c < full; c += kW) Forward3x3Cols<VecW, SW, B>(g, xrows, k, yrow, ow, c);
    if (half) Forward3x3Cols<VecH, SW, B>(g, xrows, k, yrow, ow, full);
  }
  for (; ow < ow1; ++ow) {
    for (int64_t c = 0; c < full; c += kW) Forward3x3Cols<VecW, SW, 1>(g, xrows, k, yrow, ow, c);
    if (half) Forward3x3Cols<VecH, SW, 1>(g, xrows, k, yrow, ow, full);
  }
  if (vec < g.c) ForwardGeneric(g, xrows, k, yrow, vec, g.c, ow0, ow1);
}

struct ForwardWorker {
  const Geometry g;
  const float *x, *k;
  float* y;
  std::vector<float> zeros;
  std::vector<const float*> xrows;
  std::optional<ActRows> act;  // the input's activation, if any

  ForwardWorker(const Geometry& g, const float* x, const float* k, float* y,
                const Act& a = Act{})
      : g(g), x(x), k(k), y(y), zeros(g.w * g.c, 0.0f), xrows(g.kh) {
    if (a.scale != nullptr) {  // padded rows: every output column is an inner one
      const int64_t right = (g.ow - 1) * g.sw - g.pl + (g.kw - 1) * g.dw - (g.w - 1);
      act.emplace(a, x, g.w, g.c, (g.kh - 1) * g.dh + 1, g.pl, std::max<int64_t>(right, 0));
    }
  }

  void operator()(int64_t r0, int64_t r1) {
    const int64_t blocked = (g.kh == 3 && g.kw == 3) ? g.c / kBlock * kBlock : 0;
    const bool cols3x3 = g.kh == 3 && g.kw == 3 && g.dh == 1 && g.dw == 1;
    const int64_t lo = act ? 0 : g.lo(), hi = act ? g.ow : g.hi();
    for (int64_t r = r0; r < r1; ++r) {
      g.Rows(x, r, zeros.data(), xrows.data());
      if (act) {
        for (int64_t i = 0; i < g.kh; ++i) {
          xrows[i] = xrows[i] == zeros.data() ? act->Zeros()
                                              : act->Get((xrows[i] - x) / (g.w * g.c));
        }
      }
      float* yrow = y + r * g.ow * g.c;
      if (cols3x3 && g.sw == 1) {
        Forward3x3Row<1, 8>(g, xrows.data(), k, yrow, lo, hi);
      } else if (cols3x3 && g.sw == 2) {
        Forward3x3Row<2, 4>(g, xrows.data(), k, yrow, lo, hi);
      } else {
        for (int64_t c0 = 0; c0 < blocked; c0 += kBlock)
          ForwardBlock<3, 3, kBlock>(g, xrows.data(), k, yrow, c0, lo, hi);
        if (blocked < g.c) ForwardGeneric(g, xrows.data(), k, yrow, blocked, g.c, lo, hi);
      }
      ForwardGeneric(g, xrows.data(), k, yrow, 0, g.c, 0, lo);
      ForwardGeneric(g, xrows.data(), k, yrow, 0, g.c, hi, g.ow);
    }
  }
  void Finish() {}
};

// ---- kernel gradient -----------------------------------------------------------------

// Channels [c0, c0 + CB) of output columns [ow0, ow1) of one row, every tap inside the
// image, the KH*KW*CB accumulators in registers (explicit SIMD vectors: with GCC's
// 256-bit tuning of recent Xeons, plain loops spilled them).
template <int KH, int KW, int CB>
inline void KernelGradBlock(const Geometry& g, const float* const* xrows, const float* dyrow,
                            int64_t c0, int64_t ow0, int64_t ow1, float* acc) {
  constexpr int L = sizeof(VecW) / sizeof(float), NV = CB / L;
  static_assert(CB % L == 0, "a whole number of vectors");
  VecW a[KH * KW][NV];
  for (int t = 0; t < KH * KW; ++t)
    for (int v = 0; v < NV; ++v) a[t][v] = Load<VecW>(acc + t * g.c + c0 + v * L);
  for (int64_t ow = ow0; ow < ow1; ++ow) {
    const float* dp = dyrow + ow * g.c + c0;
    VecW d[NV];
    for (int v = 0; v < NV; ++v) d[v] = Load<VecW>(dp + v * L);
    const int64_t col = ow * g.sw - g.pl;
    for (int i = 0; i < KH; ++i) {
      for (int j = 0; j < KW; ++j) {
        const float* xp = xrows[i] + (col + j * g.dw) * g.c + c0;
        for (int v = 0; v < NV; ++v) a[i * KW + j][v] += Load<VecW>(xp + v * L) * d[v];
      }
    }
  }
  for (int t = 0; t < KH * KW; ++t)
    for (int v = 0; v < NV; ++v) Store<VecW>(acc + t * g.c + c0 + v * L, a[t][v]);
}

// Any kernel size, channels [c0, c1), output columns [ow0, ow1), taps outside skipped.
inline void KernelGradGeneric(const Geometry& g, const float* const* xrows, const float* dyrow,
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

// Adds its rows' products to `acc` (ParallelSum zeroes and collects it per chunk).
struct KernelGradWorker {
  const Geometry g;
  const float *x, *dy;
  std::vector<float> zeros, acc;
  std::vector<const float*> xrows;

  KernelGradWorker(const Geometry& g, const float* x, const float* dy)
      : g(g), x(x), dy(dy), zeros(g.w * g.c, 0.0f), acc(g.kh * g.kw * g.c, 0.0f),
        xrows(g.kh) {}

  void operator()(int64_t r0, int64_t r1) {
    const int64_t blocked = (g.kh == 3 && g.kw == 3) ? g.c / kBlock * kBlock : 0;
    const int64_t lo = g.lo(), hi = g.hi();
    for (int64_t r = r0; r < r1; ++r) {
      g.Rows(x, r, zeros.data(), xrows.data());
      const float* dyrow = dy + r * g.ow * g.c;
      for (int64_t c0 = 0; c0 < blocked; c0 += kBlock)
        KernelGradBlock<3, 3, kBlock>(g, xrows.data(), dyrow, c0, lo, hi, acc.data());
      if (blocked < g.c)
        KernelGradGeneric(g, xrows.data(), dyrow, blocked, g.c, lo, hi, acc.data());
      KernelGradGeneric(g, xrows.data(), dyrow, 0, g.c, 0, lo, acc.data());
      KernelGradGeneric(g, xrows.data(), dyrow, 0, g.c, hi, g.ow, acc.data());
    }
  }
};

// ---- work sharing --------------------------------------------------------------------

// Rows [0, rows) in chunks taken from a shared counter by the calling thread and by
// tasks on XLA's pool. A worker (its own buffers) is made when a thread takes its first
// chunk; its Finish runs under the lock. The caller waits only for chunks some thread
// has taken, so a task the pool starts late finds none and touches nothing but the
// shared counter (kept alive by the task's own reference).
struct Progress {
  int64_t rows, chunk, chunks;
  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::condition_variable done;
  int64_t finished = 0;  // chunks whose worker has finished, under mu
};

template <typename Worker, typename... Args>
void ParallelRows(ffi::ThreadPool& pool, int64_t rows, Args... args) {
  if (rows == 0) return;
  auto p = std::make_shared<Progress>();
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  p->rows = rows;
  p->chunk = (rows + 8 * threads - 1) / (8 * threads);
  p->chunks = (rows + p->chunk - 1) / p->chunk;
  auto work = [p, args...] {
    std::optional<Worker> worker;
    int64_t taken = 0;
    for (int64_t k; (k = p->next.fetch_add(1)) < p->chunks; ++taken) {
      if (!worker) worker.emplace(args...);
      (*worker)(k * p->chunk, std::min(p->rows, (k + 1) * p->chunk));
    }
    if (taken == 0) return;
    std::lock_guard<std::mutex> lock(p->mu);
    worker->Finish();
    p->finished += taken;
    if (p->finished == p->chunks) p->done.notify_all();
  };
  for (int64_t t = 1; t < threads; ++t) pool.Schedule(decltype(work)(work));
  work();
  std::unique_lock<std::mutex> lock(p->mu);
  p->done.wait(lock, [&] { return p->finished == p->chunks; });
}

// Sums over rows that are the same bit for bit in every run, whichever thread takes which
// rows and however many threads there are (an exact resume needs it): rows [0, rows) in
// at most kSumChunks fixed chunks, each summed from zero into its own slot by whichever
// thread takes it (Worker adds its rows to its `acc`), then the slots added in order.
constexpr int64_t kSumChunks = 16;

template <typename Worker>
struct SumChunks {
  Worker w;
  const int64_t rows, chunks;
  float* slots;

  template <typename... Args>
  SumChunks(int64_t rows, int64_t chunks, float* slots, Args... args)
      : w(args...), rows(rows), chunks(chunks), slots(slots) {}

  void operator()(int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      std::fill(w.acc.begin(), w.acc.end(), 0.0f);
      w(k * rows / chunks, (k + 1) * rows / chunks);
      std::copy(w.acc.begin(), w.acc.end(), slots + k * w.acc.size());
    }
  }
  void Finish() {}
};

template <typename Worker, typename... Args>
void ParallelSum(ffi::ThreadPool& pool, int64_t rows, int64_t size, float* out, Args... args) {
  std::fill(out, out + size, 0.0f);
  if (rows == 0) return;
  const int64_t chunks = std::min(rows, kSumChunks);
  std::vector<float> slots(chunks * size);
  ParallelRows<SumChunks<Worker>>(pool, chunks, rows, chunks, slots.data(), args...);
  for (int64_t k = 0; k < chunks; ++k) {
    const float* slot = slots.data() + k * size;
    for (int64_t t = 0; t < size; ++t) out[t] += slot[t];
  }
}

std::optional<ffi::Error> Check(const Geometry& g) {
  if (g.kh < 1 || g.kw < 1 || g.sh < 1 || g.sw < 1 || g.dh < 1 || g.dw < 1 || g.pt < 0 ||
      g.pl < 0)
    return ffi::Error::InvalidArgument("zoo native: bad kernel size, strides, dilation or pads");
  return std::nullopt;
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                   ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t dh,
                   int64_t dw, int64_t pt, int64_t pl) {
  auto xd = x.dimensions(), kd = k.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || kd.size() != 3 || yd.size() != 4 || xd[0] != yd[0] ||
      xd[3] != kd[2] || xd[3] != yd[3])
    return ffi::Error::InvalidArgument("zoo depthwise: x (N,H,W,C), k (KH,KW,C), y (N,OH,OW,C)");
  const Geometry g{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], kd[0], kd[1], sh, sw, dh, dw, pt, pl};
  if (auto error = Check(g)) return *error;
  ParallelRows<ForwardWorker>(pool, g.n * g.oh, g, x.typed_data(), k.typed_data(),
                              y->typed_data());
  return ffi::Error::Success();
}

// The input activation of the *Act handlers: center, scale and shift of shape (C,).
std::optional<ffi::Error> MakeAct(ffi::Buffer<ffi::F32> center, ffi::Buffer<ffi::F32> scale,
                                  ffi::Buffer<ffi::F32> shift, float lo, float hi, int64_t c,
                                  Act* act) {
  for (auto* v : {&center, &scale, &shift}) {
    auto d = v->dimensions();
    if (d.size() != 1 || d[0] != c)
      return ffi::Error::InvalidArgument("zoo native: center, scale and shift must be (C,)");
  }
  if (!(lo <= hi)) return ffi::Error::InvalidArgument("zoo native: activation lo > hi");
  *act = Act{center.typed_data(), scale.typed_data(), shift.typed_data(), lo, hi};
  return std::nullopt;
}

// Forward of the activated input: clip((x - center) * scale + shift, lo, hi).
ffi::Error ForwardAct(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                      ffi::Buffer<ffi::F32> center, ffi::Buffer<ffi::F32> scale,
                      ffi::Buffer<ffi::F32> shift, ffi::ResultBuffer<ffi::F32> y, int64_t sh,
                      int64_t sw, int64_t dh, int64_t dw, int64_t pt, int64_t pl, float lo,
                      float hi) {
  auto xd = x.dimensions(), kd = k.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || kd.size() != 3 || yd.size() != 4 || xd[0] != yd[0] ||
      xd[3] != kd[2] || xd[3] != yd[3])
    return ffi::Error::InvalidArgument("zoo depthwise: x (N,H,W,C), k (KH,KW,C), y (N,OH,OW,C)");
  const Geometry g{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], kd[0], kd[1], sh, sw, dh, dw, pt, pl};
  if (auto error = Check(g)) return *error;
  Act act;
  if (auto error = MakeAct(center, scale, shift, lo, hi, g.c, &act)) return *error;
  ParallelRows<ForwardWorker>(pool, g.n * g.oh, g, x.typed_data(), k.typed_data(),
                              y->typed_data(), act);
  return ffi::Error::Success();
}

ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> out, int64_t sh, int64_t sw, int64_t dh,
                      int64_t dw, int64_t pt, int64_t pl) {
  auto xd = x.dimensions(), dyd = dy.dimensions(), od = out->dimensions();
  if (xd.size() != 4 || dyd.size() != 4 || od.size() != 3 || xd[0] != dyd[0] ||
      xd[3] != dyd[3] || xd[3] != od[2])
    return ffi::Error::InvalidArgument("zoo depthwise: x (N,H,W,C), dy (N,OH,OW,C), dk (KH,KW,C)");
  const Geometry g{xd[0], xd[1], xd[2], xd[3], dyd[1], dyd[2], od[0], od[1], sh, sw, dh, dw, pt, pl};
  if (auto error = Check(g)) return *error;
  ParallelSum<KernelGradWorker>(pool, g.ow > 0 ? g.n * g.oh : 0, g.kh * g.kw * g.c,
                                out->typed_data(), g, x.typed_data(), dy.typed_data());
  return ffi::Error::Success();
}

// ---- dense convolution forward (one group, dilation 1) ----------------------------------

// y (N, OH, OW, CO) from x (N, H, W, C) and k (KH, KW, C, CO) (HWIO). Per output row: the
// input rows of its taps (a row outside the image is skipped: zero padding), then blocks
// of kConvCols output columns x kConvVecs vectors of output channels kept in registers;
// each weight vector loaded is multiplied by kConvCols broadcast inputs. Columns whose
// taps leave the image go one at a time over the taps inside; channels past the last
// full vector through a scalar loop.
constexpr int kConvCols = kLanes >= 16 ? 6 : 3;
constexpr int kConvVecs = 4;

// Taps [j0, j1) of each kernel row: all of them inside the image, a subset at the border.
template <int B, int NV, int SW>
inline void ConvCols(const Geometry& g, int64_t co_n, const float* const* xrows,
                     const float* k, float* yrow, int64_t ow, int64_t co, int64_t j0,
                     int64_t j1) {
  constexpr int64_t L = sizeof(VecW) / sizeof(float);
  const int64_t col0 = ow * SW - g.pl;
  bool first = true;
  for (int64_t i = 0; i < g.kh; ++i) {
    if (xrows[i] == nullptr) continue;
    VecW acc[B][NV];
    for (int b = 0; b < B; ++b)
      for (int v = 0; v < NV; ++v) acc[b][v] = VecW{};
    for (int64_t j = j0; j < j1; ++j) {
      const float* xp = xrows[i] + (col0 + j) * g.c;
      const float* wp = k + (i * g.kw + j) * g.c * co_n + co;
      for (int64_t ci = 0; ci < g.c; ++ci, wp += co_n) {
        VecW w[NV];
        for (int v = 0; v < NV; ++v) w[v] = Load<VecW>(wp + v * L);
        for (int b = 0; b < B; ++b) {
          const float s = xp[b * SW * g.c + ci];
          for (int v = 0; v < NV; ++v) acc[b][v] += s * w[v];
        }
      }
    }
    // one partial sum per kernel row, added up in y: float32 rounding as XLA's (a single
    // running sum over kh * kw * in products rounds up to 2x worse)
    for (int b = 0; b < B; ++b) {
      for (int v = 0; v < NV; ++v) {
        float* yp = yrow + (ow + b) * co_n + co + v * L;
        Store<VecW>(yp, first ? acc[b][v] : Load<VecW>(yp) + acc[b][v]);
      }
    }
    first = false;
  }
  if (first) {  // every tap's row outside the image
    for (int b = 0; b < B; ++b)
      for (int v = 0; v < NV; ++v) Store<VecW>(yrow + (ow + b) * co_n + co + v * L, VecW{});
  }
}

// Output columns [ow0, ow1), output channels [co0, co1), taps outside the image skipped;
// one partial sum per kernel row, as ConvCols.
inline void ConvGeneric(const Geometry& g, int64_t co_n, const float* const* xrows,
                        const float* k, float* yrow, int64_t ow0, int64_t ow1, int64_t co0,
                        int64_t co1) {
  for (int64_t ow = ow0; ow < ow1; ++ow) {
    for (int64_t c0 = co0; c0 < co1; c0 += kLanes) {
      const int64_t c1 = std::min(co1, c0 + kLanes);
      float* yp = yrow + ow * co_n;
      for (int64_t co = c0; co < c1; ++co) yp[co] = 0.0f;
      for (int64_t i = 0; i < g.kh; ++i) {
        if (xrows[i] == nullptr) continue;
        float part[kLanes] = {};
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t col = ow * g.sw - g.pl + j;
          if (col < 0 || col >= g.w) continue;
          const float* xp = xrows[i] + col * g.c;
          const float* wp = k + (i * g.kw + j) * g.c * co_n;
          for (int64_t ci = 0; ci < g.c; ++ci) {
            const float s = xp[ci];
            for (int64_t co = c0; co < c1; ++co) part[co - c0] += s * wp[ci * co_n + co];
          }
        }
        for (int64_t co = c0; co < c1; ++co) yp[co] += part[co - c0];
      }
    }
  }
}

template <int SW>
struct ConvWorker {
  const Geometry g;  // c: input channels
  const int64_t co_n;
  const float *x, *k;
  float* y;
  std::vector<const float*> xrows;

  ConvWorker(const Geometry& g, int64_t co_n, const float* x, const float* k, float* y)
      : g(g), co_n(co_n), x(x), k(k), y(y), xrows(g.kh) {}

  // Output channels [co, co + NV vectors) of a row: blocks of columns inside the image,
  // then single ones, then the border columns with the taps inside.
  template <int NV>
  void Vectors(float* yrow, int64_t lo, int64_t hi, int64_t co) {
    const float* const* xr = xrows.data();
    int64_t ow = lo;
    for (; ow + kConvCols <= hi; ow += kConvCols)
      ConvCols<kConvCols, NV, SW>(g, co_n, xr, k, yrow, ow, co, 0, g.kw);
    for (; ow < hi; ++ow) ConvCols<1, NV, SW>(g, co_n, xr, k, yrow, ow, co, 0, g.kw);
    auto border = [&](int64_t ow) {
      const int64_t col0 = ow * SW - g.pl;
      const int64_t j0 = std::max<int64_t>(0, -col0), j1 = std::min(g.kw, g.w - col0);
      ConvCols<1, NV, SW>(g, co_n, xr, k, yrow, ow, co, j0, std::max(j0, j1));
    };
    for (ow = 0; ow < lo; ++ow) border(ow);
    for (ow = hi; ow < g.ow; ++ow) border(ow);
  }

  void operator()(int64_t r0, int64_t r1) {
    constexpr int64_t L = sizeof(VecW) / sizeof(float);
    const int64_t lo = g.lo(), hi = g.hi(), vec = co_n / L * L;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / g.oh, o = r % g.oh;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t row = g.InputRow(o, i);
        xrows[i] = (row < 0 || row >= g.h) ? nullptr : x + (b * g.h + row) * g.w * g.c;
      }
      float* yrow = y + r * g.ow * co_n;
      int64_t co = 0;
      for (; co + kConvVecs * L <= vec; co += kConvVecs * L) Vectors<kConvVecs>(yrow, lo, hi, co);
      switch ((vec - co) / L) {
        case 3: Vectors<3>(yrow, lo, hi, co); break;
        case 2: Vectors<2>(yrow, lo, hi, co); break;
        case 1: Vectors<1>(yrow, lo, hi, co); break;
        default: break;
      }
      if (vec < co_n) ConvGeneric(g, co_n, xrows.data(), k, yrow, 0, g.ow, vec, co_n);
    }
  }
  void Finish() {}
};

ffi::Error Conv(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt, int64_t pl) {
  auto xd = x.dimensions(), kd = k.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || kd.size() != 4 || yd.size() != 4 || xd[0] != yd[0] ||
      xd[3] != kd[2] || kd[3] != yd[3])
    return ffi::Error::InvalidArgument("zoo conv: x (N,H,W,C), k (KH,KW,C,CO), y (N,OH,OW,CO)");
  const Geometry g{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], kd[0], kd[1], sh, sw, 1, 1, pt, pl};
  if (auto error = Check(g)) return *error;
  const int64_t rows = g.n * g.oh;
  if (sw == 1)
    ParallelRows<ConvWorker<1>>(pool, rows, g, kd[3], x.typed_data(), k.typed_data(),
                                y->typed_data());
  else if (sw == 2)
    ParallelRows<ConvWorker<2>>(pool, rows, g, kd[3], x.typed_data(), k.typed_data(),
                                y->typed_data());
  else
    return ffi::Error::InvalidArgument("zoo conv: column stride 1 or 2");
  return ffi::Error::Success();
}

// ---- dense convolution kernel gradient -----------------------------------------------

// dk (KH, KW, C, CO) = sum over n, oh, ow of x[n, oh*sh - pt + i, ow*sw - pl + j, c] *
// dy[n, oh, ow, co]: per output row, tap and block of CB input channels x NV vectors of
// output channels, a sum over the row's columns in registers (each dy vector loaded serves
// CB products), then added to the chunk's partial sums.
template <int CB, int NV>
inline void ConvKGradCols(const Geometry& g, int64_t co_n, const float* xrow,
                          const float* dyrow, int64_t j, int64_t ow0, int64_t ow1, int64_t c0,
                          int64_t co, float* acc) {
  constexpr int64_t L = sizeof(VecW) / sizeof(float);
  VecW a[CB][NV];
  for (int cb = 0; cb < CB; ++cb)
    for (int v = 0; v < NV; ++v) a[cb][v] = VecW{};
  const float* xp = xrow + (ow0 * g.sw - g.pl + j) * g.c + c0;
  const float* dp = dyrow + ow0 * co_n + co;
  for (int64_t ow = ow0; ow < ow1; ++ow, xp += g.sw * g.c, dp += co_n) {
    VecW d[NV];
    for (int v = 0; v < NV; ++v) d[v] = Load<VecW>(dp + v * L);
    for (int cb = 0; cb < CB; ++cb) {
      const float s = xp[cb];
      for (int v = 0; v < NV; ++v) a[cb][v] += s * d[v];
    }
  }
  for (int cb = 0; cb < CB; ++cb)
    for (int v = 0; v < NV; ++v) {
      float* ap = acc + (c0 + cb) * co_n + co + v * L;
      Store<VecW>(ap, Load<VecW>(ap) + a[cb][v]);
    }
}

constexpr int kKGradChannels = kLanes >= 16 ? 6 : 3;

struct ConvKGradWorker {
  const Geometry g;  // c: input channels
  const int64_t co_n;
  const float *x, *dy;
  std::vector<float> acc;  // its rows' sums (ParallelSum zeroes and collects it per chunk)

  ConvKGradWorker(const Geometry& g, int64_t co_n, const float* x, const float* dy)
      : g(g), co_n(co_n), x(x), dy(dy), acc(g.kh * g.kw * g.c * co_n, 0.0f) {}

  template <int NV>
  void Channels(const float* xrow, const float* dyrow, int64_t j, int64_t ow0, int64_t ow1,
                int64_t co, float* acc) {
    int64_t c0 = 0;
    for (; c0 + kKGradChannels <= g.c; c0 += kKGradChannels)
      ConvKGradCols<kKGradChannels, NV>(g, co_n, xrow, dyrow, j, ow0, ow1, c0, co, acc);
    for (; c0 < g.c; ++c0) ConvKGradCols<1, NV>(g, co_n, xrow, dyrow, j, ow0, ow1, c0, co, acc);
  }

  void operator()(int64_t r0, int64_t r1) {
    constexpr int64_t L = sizeof(VecW) / sizeof(float);
    const int64_t vec = co_n / L * L;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / g.oh, o = r % g.oh;
      const float* dyrow = dy + r * g.ow * co_n;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t row = g.InputRow(o, i);
        if (row < 0 || row >= g.h) continue;
        const float* xrow = x + (b * g.h + row) * g.w * g.c;
        for (int64_t j = 0; j < g.kw; ++j) {
          // output columns whose tap j is inside the image
          const int64_t first = std::max<int64_t>(0, (g.pl - j + g.sw - 1) / g.sw);
          const int64_t lastcol = g.w - 1 + g.pl - j;
          const int64_t end = lastcol < 0 ? 0 : std::min(g.ow, lastcol / g.sw + 1);
          if (first >= end) continue;
          float* at = acc.data() + (i * g.kw + j) * g.c * co_n;
          int64_t co = 0;
          for (; co + kConvVecs * L <= vec; co += kConvVecs * L)
            Channels<kConvVecs>(xrow, dyrow, j, first, end, co, at);
          switch ((vec - co) / L) {
            case 3: Channels<3>(xrow, dyrow, j, first, end, co, at); break;
            case 2: Channels<2>(xrow, dyrow, j, first, end, co, at); break;
            case 1: Channels<1>(xrow, dyrow, j, first, end, co, at); break;
            default: break;
          }
          for (int64_t ow = first; ow < end; ++ow) {  // channels past the last vector
            const float* xp = xrow + (ow * g.sw - g.pl + j) * g.c;
            const float* dp = dyrow + ow * co_n;
            for (int64_t c = 0; c < g.c; ++c)
              for (int64_t q = vec; q < co_n; ++q) at[c * co_n + q] += xp[c] * dp[q];
          }
        }
      }
    }
  }
};

ffi::Error ConvKernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> out,
                          int64_t sh, int64_t sw, int64_t pt, int64_t pl) {
  auto xd = x.dimensions(), dyd = dy.dimensions(), od = out->dimensions();
  if (xd.size() != 4 || dyd.size() != 4 || od.size() != 4 || xd[0] != dyd[0] ||
      xd[3] != od[2] || dyd[3] != od[3])
    return ffi::Error::InvalidArgument(
        "zoo conv kernel grad: x (N,H,W,C), dy (N,OH,OW,CO), dk (KH,KW,C,CO)");
  const Geometry g{xd[0], xd[1], xd[2], xd[3], dyd[1], dyd[2], od[0], od[1], sh, sw, 1, 1,
                   pt, pl};
  if (auto error = Check(g)) return *error;
  ParallelSum<ConvKGradWorker>(pool, g.ow > 0 ? g.n * g.oh : 0, g.kh * g.kw * g.c * od[3],
                               out->typed_data(), g, od[3], x.typed_data(), dy.typed_data());
  return ffi::Error::Success();
}

// ---- max pooling (padding is -inf: taps outside the image are skipped) -----------------

struct MaxPoolForwardWorker {
  const Geometry g;
  const float* x;
  float* y;
  std::optional<ActRows> act;  // the input's activation, if any
  std::vector<const float*> xrows;

  MaxPoolForwardWorker(const Geometry& g, const float* x, float* y, const Act& a = Act{})
      : g(g), x(x), y(y), xrows(g.kh) {
    if (a.scale != nullptr) act.emplace(a, x, g.w, g.c, g.kh);
  }

  void operator()(int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / g.oh, o = r % g.oh;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t row = g.InputRow(o, i), key = b * g.h + row;
        xrows[i] = (row < 0 || row >= g.h) ? nullptr
                   : act                   ? act->Get(key)
                                           : x + key * g.w * g.c;
      }
      for (int64_t ow = 0; ow < g.ow; ++ow) {
        float* yp = y + (r * g.ow + ow) * g.c;
        for (int64_t c = 0; c < g.c; ++c) yp[c] = -std::numeric_limits<float>::infinity();
        for (int64_t i = 0; i < g.kh; ++i) {
          if (xrows[i] == nullptr) continue;
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t col = ow * g.sw - g.pl + j;
            if (col < 0 || col >= g.w) continue;
            const float* xp = xrows[i] + col * g.c;
#pragma GCC ivdep
            for (int64_t c = 0; c < g.c; ++c)  // a NaN wins, as in XLA's max
              yp[c] = (xp[c] > yp[c] || xp[c] != xp[c]) ? xp[c] : yp[c];
          }
        }
      }
    }
  }
  void Finish() {}
};

// The gradient goes to each window's first maximum in row-major order (XLA's
// select-and-scatter): per channel, dy is added at the first tap equal to y and then
// zeroed, so later equal taps add nothing. Whole images per chunk: windows overlap.
struct MaxPoolGradWorker {
  const Geometry g;
  const float *x, *y, *dy;
  float* dx;
  std::vector<float> left;  // one pixel's dy not yet given to a tap

  MaxPoolGradWorker(const Geometry& g, const float* x, const float* y, const float* dy,
                    float* dx)
      : g(g), x(x), y(y), dy(dy), dx(dx), left(g.c) {}

  void operator()(int64_t n0, int64_t n1) {
    std::fill(dx + n0 * g.h * g.w * g.c, dx + n1 * g.h * g.w * g.c, 0.0f);
    for (int64_t b = n0; b < n1; ++b) {
      for (int64_t o = 0; o < g.oh; ++o) {
        for (int64_t ow = 0; ow < g.ow; ++ow) {
          const int64_t at = ((b * g.oh + o) * g.ow + ow) * g.c;
          const float* yp = y + at;
          std::copy(dy + at, dy + at + g.c, left.begin());
          float* lp = left.data();
          for (int64_t i = 0; i < g.kh; ++i) {
            const int64_t row = g.InputRow(o, i);
            if (row < 0 || row >= g.h) continue;
            for (int64_t j = 0; j < g.kw; ++j) {
              const int64_t col = ow * g.sw - g.pl + j;
              if (col < 0 || col >= g.w) continue;
              const int64_t pixel = ((b * g.h + row) * g.w + col) * g.c;
              const float* xp = x + pixel;
              float* dp = dx + pixel;
#pragma GCC ivdep
              for (int64_t c = 0; c < g.c; ++c) {
                const bool first = xp[c] == yp[c];
                dp[c] += first ? lp[c] : 0.0f;
                lp[c] = first ? 0.0f : lp[c];
              }
            }
          }
        }
      }
    }
  }
  void Finish() {}
};

ffi::Error MaxPool(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y,
                   int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt, int64_t pl) {
  auto xd = x.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || yd.size() != 4 || xd[0] != yd[0] || xd[3] != yd[3])
    return ffi::Error::InvalidArgument("zoo max pool: x (N,H,W,C), y (N,OH,OW,C)");
  const Geometry g{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], kh, kw, sh, sw, 1, 1, pt, pl};
  if (auto error = Check(g)) return *error;
  ParallelRows<MaxPoolForwardWorker>(pool, g.n * g.oh, g, x.typed_data(), y->typed_data());
  return ffi::Error::Success();
}

ffi::Error MaxPoolAct(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> center,
                      ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> shift,
                      ffi::ResultBuffer<ffi::F32> y, int64_t kh, int64_t kw, int64_t sh,
                      int64_t sw, int64_t pt, int64_t pl, float lo, float hi) {
  auto xd = x.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || yd.size() != 4 || xd[0] != yd[0] || xd[3] != yd[3])
    return ffi::Error::InvalidArgument("zoo max pool: x (N,H,W,C), y (N,OH,OW,C)");
  const Geometry g{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], kh, kw, sh, sw, 1, 1, pt, pl};
  if (auto error = Check(g)) return *error;
  Act act;
  if (auto error = MakeAct(center, scale, shift, lo, hi, g.c, &act)) return *error;
  ParallelRows<MaxPoolForwardWorker>(pool, g.n * g.oh, g, x.typed_data(), y->typed_data(), act);
  return ffi::Error::Success();
}

ffi::Error MaxPoolGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> y,
                       ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dx, int64_t kh,
                       int64_t kw, int64_t sh, int64_t sw, int64_t pt, int64_t pl) {
  auto xd = x.dimensions(), yd = y.dimensions(), dyd = dy.dimensions(), dxd = dx->dimensions();
  if (xd.size() != 4 || yd.size() != 4 || xd[0] != yd[0] || xd[3] != yd[3] ||
      !std::equal(yd.begin(), yd.end(), dyd.begin(), dyd.end()) ||
      !std::equal(xd.begin(), xd.end(), dxd.begin(), dxd.end()))
    return ffi::Error::InvalidArgument("zoo max pool grad: x, dx (N,H,W,C), y, dy (N,OH,OW,C)");
  const Geometry g{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], kh, kw, sh, sw, 1, 1, pt, pl};
  if (auto error = Check(g)) return *error;
  ParallelRows<MaxPoolGradWorker>(pool, g.n, g, x.typed_data(), y.typed_data(), dy.typed_data(),
                                  dx->typed_data());
  return ffi::Error::Success();
}

}  // namespace

#define ZOO_DEPTHWISE_BINDING                  \
  ffi::Ffi::Bind()                             \
      .Ctx<ffi::ThreadPool>()                  \
      .Arg<ffi::Buffer<ffi::F32>>()            \
      .Arg<ffi::Buffer<ffi::F32>>()            \
      .Ret<ffi::Buffer<ffi::F32>>()            \
      .Attr<int64_t>("sh")                     \
      .Attr<int64_t>("sw")                     \
      .Attr<int64_t>("dh")                     \
      .Attr<int64_t>("dw")                     \
      .Attr<int64_t>("pt")                     \
      .Attr<int64_t>("pl")

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooDepthwiseForward, Forward, ZOO_DEPTHWISE_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooDepthwiseKernelGrad, KernelGrad, ZOO_DEPTHWISE_BINDING);

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooDepthwiseForwardAct, ForwardAct,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("dh")
                                  .Attr<int64_t>("dw")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pl")
                                  .Attr<float>("lo")
                                  .Attr<float>("hi"));

#define ZOO_CONV_BINDING                       \
  ffi::Ffi::Bind()                             \
      .Ctx<ffi::ThreadPool>()                  \
      .Arg<ffi::Buffer<ffi::F32>>()            \
      .Arg<ffi::Buffer<ffi::F32>>()            \
      .Ret<ffi::Buffer<ffi::F32>>()            \
      .Attr<int64_t>("sh")                     \
      .Attr<int64_t>("sw")                     \
      .Attr<int64_t>("pt")                     \
      .Attr<int64_t>("pl")

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooConv, Conv, ZOO_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooConvKernelGrad, ConvKernelGrad, ZOO_CONV_BINDING);

XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooMaxPool, MaxPool,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pl"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooMaxPoolAct, MaxPoolAct,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pl")
                                  .Attr<float>("lo")
                                  .Attr<float>("hi"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ZooMaxPoolGrad, MaxPoolGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pl"));
