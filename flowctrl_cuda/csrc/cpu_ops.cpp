// flowctrl_cuda fast CPU path: bilinear backward warp and forward splatting (sum / avg / softmax)
// for contiguous float32 NCHW tensors. Plain C++17 + std::thread, C ABI, no torch headers, so it
// compiles in about a second and is loaded with ctypes (flowctrl_cuda/_cpu.py).
//
// Semantics are those of flowctrl_cuda/reference.py; keep the floating-point steps in the same
// order (and build with -ffp-contract=off) so results agree with the reference to ~1e-6.
//
// Splat accumulates pixel-major: acc[q * (C+1) + c] holds channel c of target q and acc[q*(C+1) + C]
// its weight, so the 4 taps of a source touch 2 short contiguous runs instead of 4·(C+1) planes;
// one finishing pass divides by the weight and writes the planar output and norm.
// Threading without atomics: each thread owns an accumulation buffer. With at least as many images
// as threads a thread owns whole images; otherwise the source rows of each image are split between
// threads and the finishing pass sums the buffers.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

enum SplatMode : int { kSum = 0, kAvg = 1, kSoftmax = 2 };

template <typename F>
void parallel_for(int64_t n, int threads, F&& body) {
  // body(begin, end, thread_index) over [0, n) split into contiguous chunks
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n)));
  if (threads == 1) {
    body(int64_t(0), n, 0);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  const int64_t chunk = (n + threads - 1) / threads;
  for (int t = 1; t < threads; ++t) {
    const int64_t b = std::min<int64_t>(n, t * chunk), e = std::min<int64_t>(n, (t + 1) * chunk);
    pool.emplace_back([&body, b, e, t]() { body(b, e, t); });
  }
  body(int64_t(0), std::min<int64_t>(n, chunk), 0);
  for (auto& th : pool) th.join();
}

// body(begin, end) over [0, n) in chunks of `grain` handed out on demand (load balancing).
template <typename F>
void parallel_dynamic(int64_t n, int threads, int64_t grain, F&& body) {
  std::atomic<int64_t> next(0);
  parallel_for(threads, threads, [&](int64_t, int64_t, int) {
    for (int64_t b = next.fetch_add(grain); b < n; b = next.fetch_add(grain)) body(b, std::min(n, b + grain));
  });
}

inline float clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Round half to even for |v| <= 2^22 in the default rounding mode (no libm call): adding and
// subtracting 1.5 * 2^23 leaves v rounded to an integer.
inline float round_even(float v) {
  const float big = 12582912.0f;  // not folded to v: no -ffast-math / -fassociative-math here
  return (v + big) - big;
}

// floor() of a finite float already clamped to a small range, without a libm call (plain -O3
// targets baseline x86-64, where std::floor is not a single instruction). Exact there.
inline int64_t floor_int(float v) {
  const int64_t t = static_cast<int64_t>(v);  // truncates toward zero
  return static_cast<float>(t) > v ? t - 1 : t;
}

// Splat source rows [row_begin, row_end) of one image into acc (pixel-major, stride C+1).
// e: per-source weight plane (already exp(Z - max) for softmax) or nullptr for 1.
// CT > 0 fixes the channel count at compile time (unrolled, vectorizable); CT == 0 reads C.
template <int CT>
void splat_rows(const float* __restrict__ x, const float* __restrict__ flow, const float* __restrict__ e,
                float* __restrict__ acc, int64_t C_, int64_t H, int64_t W, int64_t row_begin, int64_t row_end) {
  const int64_t C = CT > 0 ? CT : C_;
  const int64_t S = C + 1;
  const int64_t HW = H * W;
  const float* fx = flow;
  const float* fy = flow + HW;
  const float wmax = static_cast<float>(W + 1), hmax = static_cast<float>(H + 1);
  float v[CT > 0 ? CT + 1 : 1];
  std::vector<float> vdyn(CT > 0 ? 0 : C + 1);
  float* val = CT > 0 ? v : vdyn.data();
  for (int64_t y = row_begin; y < row_end; ++y) {
    for (int64_t xcol = 0; xcol < W; ++xcol) {
      const int64_t p = y * W + xcol;
      float qx = static_cast<float>(xcol) + fx[p];
      float qy = static_cast<float>(y) + fy[p];
      if (!std::isfinite(qx) || !std::isfinite(qy)) continue;
      qx = clampf(qx, -2.0f, wmax);
      qy = clampf(qy, -2.0f, hmax);
      const int64_t x0 = floor_int(qx), y0 = floor_int(qy);
      const float ax = qx - static_cast<float>(x0), ay = qy - static_cast<float>(y0);
      float w[4] = {(1.0f - ax) * (1.0f - ay), ax * (1.0f - ay), (1.0f - ax) * ay, ax * ay};
      if (e != nullptr) {
        const float ep = e[p];
        for (int k = 0; k < 4; ++k) w[k] = w[k] * ep;
      }
      for (int64_t c = 0; c < C; ++c) val[c] = x[c * HW + p];
      val[C] = 1.0f;
      const int64_t q00 = y0 * W + x0;
      if (x0 >= 0 && x0 + 1 < W && y0 >= 0 && y0 + 1 < H) {  // interior: two runs of 2·S floats
        float* r0 = acc + q00 * S;
        float* r1 = r0 + W * S;
        for (int64_t c = 0; c < S; ++c) {
          r0[c] += val[c] * w[0];
          r0[S + c] += val[c] * w[1];
          r1[c] += val[c] * w[2];
          r1[S + c] += val[c] * w[3];
        }
        continue;
      }
      const bool vx0 = x0 >= 0 && x0 < W, vx1 = x0 + 1 >= 0 && x0 + 1 < W;
      const bool vy0 = y0 >= 0 && y0 < H, vy1 = y0 + 1 >= 0 && y0 + 1 < H;
      const bool valid[4] = {vx0 && vy0, vx1 && vy0, vx0 && vy1, vx1 && vy1};
      const int64_t q[4] = {q00, q00 + 1, q00 + W, q00 + W + 1};
      for (int k = 0; k < 4; ++k) {
        if (!valid[k]) continue;
        float* dst = acc + q[k] * S;
        const float wk = w[k];
        for (int64_t c = 0; c < S; ++c) dst[c] += val[c] * wk;  // val[C] = 1: the weight slot
      }
    }
  }
}

void splat_rows_any(const float* x, const float* flow, const float* e, float* acc, int64_t C, int64_t H, int64_t W,
                    int64_t row_begin, int64_t row_end) {
  switch (C) {
    case 1: splat_rows<1>(x, flow, e, acc, C, H, W, row_begin, row_end); break;
    case 2: splat_rows<2>(x, flow, e, acc, C, H, W, row_begin, row_end); break;
    case 3: splat_rows<3>(x, flow, e, acc, C, H, W, row_begin, row_end); break;
    case 4: splat_rows<4>(x, flow, e, acc, C, H, W, row_begin, row_end); break;
    default: splat_rows<0>(x, flow, e, acc, C, H, W, row_begin, row_end); break;
  }
}

// Finish pixels [begin, end): sum the `count` pixel-major buffers, divide by the weight when
// `divide` (0 where nothing landed), write planar out (C planes) and norm (may be null).
template <int CT>
void finish_range(const float* const* bufs, int count, float* __restrict__ out, float* __restrict__ norm, int64_t C_,
                  int64_t HW, bool divide, int64_t begin, int64_t end) {
  const int64_t C = CT > 0 ? CT : C_;
  const int64_t S = C + 1;
  float v[CT > 0 ? CT + 1 : 1];
  std::vector<float> vdyn(CT > 0 ? 0 : S);
  float* tmp = CT > 0 ? v : vdyn.data();
  for (int64_t p = begin; p < end; ++p) {
    const float* src = bufs[0] + p * S;
    for (int64_t c = 0; c < S; ++c) tmp[c] = src[c];
    for (int b = 1; b < count; ++b) {
      const float* more = bufs[b] + p * S;
      for (int64_t c = 0; c < S; ++c) tmp[c] += more[c];
    }
    const float nrm = tmp[C];
    if (norm != nullptr) norm[p] = nrm;
    if (divide) {
      for (int64_t c = 0; c < C; ++c) out[c * HW + p] = nrm > 0.0f ? tmp[c] / nrm : 0.0f;
    } else {
      for (int64_t c = 0; c < C; ++c) out[c * HW + p] = tmp[c];
    }
  }
}

void finish_any(const float* const* bufs, int count, float* out, float* norm, int64_t C, int64_t HW, bool divide,
                int64_t begin, int64_t end) {
  switch (C) {
    case 1: finish_range<1>(bufs, count, out, norm, C, HW, divide, begin, end); break;
    case 2: finish_range<2>(bufs, count, out, norm, C, HW, divide, begin, end); break;
    case 3: finish_range<3>(bufs, count, out, norm, C, HW, divide, begin, end); break;
    case 4: finish_range<4>(bufs, count, out, norm, C, HW, divide, begin, end); break;
    default: finish_range<0>(bufs, count, out, norm, C, HW, divide, begin, end); break;
  }
}

// exp(v) for v in [-87, 88] (Cephes expf: Cody-Waite range reduction + degree-6 polynomial, about
// 1 ulp), branch-free so the loop vectorizes; std::exp is not vectorized without -ffast-math.
inline float exp_poly(float v) {
  v = clampf(v, -87.0f, 88.0f);
  const float t = v * 1.44269504088896341f + 0.5f;
  int32_t n = static_cast<int32_t>(t);  // round to nearest: truncate, then floor (int32: vectorizes)
  n = static_cast<float>(n) > t ? n - 1 : n;
  const float nf = static_cast<float>(n);
  float r = v - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t bits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Per-source weight plane for one image: weight (linear) or exp(Z - max Z) (softmax).
void prepare_weight(const float* weight, float* e, int64_t HW, int mode) {
  if (mode != kSoftmax) {
    std::memcpy(e, weight, sizeof(float) * HW);
    return;
  }
  float lane[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
  int64_t p0 = 0;
  for (; p0 + 8 <= HW; p0 += 8)  // 8 independent chains (the compiler keeps them in one vector)
    for (int k = 0; k < 8; ++k) lane[k] = weight[p0 + k] > lane[k] ? weight[p0 + k] : lane[k];
  float zmax = -INFINITY;
  for (int k = 0; k < 8; ++k) zmax = lane[k] > zmax ? lane[k] : zmax;
  for (; p0 < HW; ++p0) zmax = weight[p0] > zmax ? weight[p0] : zmax;
  int32_t outside = 0;
  for (int64_t p = 0; p < HW; ++p) {
    const float v = weight[p] - zmax;
    e[p] = exp_poly(v);
    outside |= !(v >= -87.0f && v <= 88.0f);
  }
  if (outside) {  // some values beyond the polynomial's range (underflow, inf, NaN): libm there
    for (int64_t p = 0; p < HW; ++p) {
      const float v = weight[p] - zmax;
      if (!(v >= -87.0f && v <= 88.0f)) e[p] = std::exp(v);
    }
  }
}

// Backward-warp global rows [rb, re) of the (N*H) output rows.
template <int CT>
void warp_rows(const float* __restrict__ x, const float* __restrict__ flow, float* __restrict__ out, int64_t C_,
               int64_t H, int64_t W, bool border, int64_t rb, int64_t re) {
  const int64_t C = CT > 0 ? CT : C_;
  const int64_t HW = H * W;
  const float wmax = border ? static_cast<float>(W - 1) : static_cast<float>(W + 1);
  const float hmax = border ? static_cast<float>(H - 1) : static_cast<float>(H + 1);
  const float lo = border ? 0.0f : -2.0f;
  for (int64_t r = rb; r < re; ++r) {
    const int64_t n = r / H, y = r % H;
    const float* xn = x + n * C * HW;
    const float* fx = flow + n * 2 * HW;
    const float* fy = fx + HW;
    float* on = out + n * C * HW;
    for (int64_t xcol = 0; xcol < W; ++xcol) {
      const int64_t p = y * W + xcol;
      float qx = static_cast<float>(xcol) + fx[p];
      float qy = static_cast<float>(y) + fy[p];
      if (!std::isfinite(qx) || !std::isfinite(qy)) {  // undefined position reads 0 (either padding)
        for (int64_t c = 0; c < C; ++c) on[c * HW + p] = 0.0f;
        continue;
      }
      qx = clampf(qx, lo, wmax);
      qy = clampf(qy, lo, hmax);
      const int64_t x0 = floor_int(qx), y0 = floor_int(qy);
      const float ax = qx - static_cast<float>(x0), ay = qy - static_cast<float>(y0);
      float w[4] = {(1.0f - ax) * (1.0f - ay), ax * (1.0f - ay), (1.0f - ax) * ay, ax * ay};
      int64_t q00 = y0 * W + x0, q[4];
      if (x0 >= 0 && x0 + 1 < W && y0 >= 0 && y0 + 1 < H) {
        q[0] = q00;
        q[1] = q00 + 1;
        q[2] = q00 + W;
        q[3] = q00 + W + 1;
      } else {  // edge: a tap outside the image reads pixel 0 with weight 0, as in the reference
        const bool vx0 = x0 >= 0 && x0 < W, vx1 = x0 + 1 >= 0 && x0 + 1 < W;
        const bool vy0 = y0 >= 0 && y0 < H, vy1 = y0 + 1 >= 0 && y0 + 1 < H;
        const bool valid[4] = {vx0 && vy0, vx1 && vy0, vx0 && vy1, vx1 && vy1};
        const int64_t qq[4] = {q00, q00 + 1, q00 + W, q00 + W + 1};
        for (int k = 0; k < 4; ++k) {
          q[k] = valid[k] ? qq[k] : 0;
          w[k] = valid[k] ? w[k] : 0.0f;
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        const float* plane = xn + c * HW;
        on[c * HW + p] = plane[q[0]] * w[0] + plane[q[1]] * w[1] + plane[q[2]] * w[2] + plane[q[3]] * w[3];
      }
    }
  }
}

}  // namespace



// Bilinear sample of plane(s) at (qx, qy) exactly as warp_rows (same clamping, taps and order).
struct Taps {
  int64_t q[4];
  float w[4];
  bool ok;
};
inline Taps bilinear_taps(float qx, float qy, int64_t H, int64_t W, bool border) {
  Taps t;
  if (!std::isfinite(qx) || !std::isfinite(qy)) {
    t.ok = false;
    return t;
  }
  t.ok = true;
  const float lo = border ? 0.0f : -2.0f;
  qx = clampf(qx, lo, border ? static_cast<float>(W - 1) : static_cast<float>(W + 1));
  qy = clampf(qy, lo, border ? static_cast<float>(H - 1) : static_cast<float>(H + 1));
  const int64_t x0 = floor_int(qx), y0 = floor_int(qy);
  const float ax = qx - static_cast<float>(x0), ay = qy - static_cast<float>(y0);
  t.w[0] = (1.0f - ax) * (1.0f - ay);
  t.w[1] = ax * (1.0f - ay);
  t.w[2] = (1.0f - ax) * ay;
  t.w[3] = ax * ay;
  const int64_t q00 = y0 * W + x0;
  if (x0 >= 0 && x0 + 1 < W && y0 >= 0 && y0 + 1 < H) {
    t.q[0] = q00;
    t.q[1] = q00 + 1;
    t.q[2] = q00 + W;
    t.q[3] = q00 + W + 1;
  } else {
    const bool vx0 = x0 >= 0 && x0 < W, vx1 = x0 + 1 >= 0 && x0 + 1 < W;
    const bool vy0 = y0 >= 0 && y0 < H, vy1 = y0 + 1 >= 0 && y0 + 1 < H;
    const bool valid[4] = {vx0 && vy0, vx1 && vy0, vx0 && vy1, vx1 && vy1};
    const int64_t qq[4] = {q00, q00 + 1, q00 + W, q00 + W + 1};
    for (int k = 0; k < 4; ++k) {
      t.q[k] = valid[k] ? qq[k] : 0;
      t.w[k] = valid[k] ? t.w[k] : 0.0f;
    }
  }
  return t;
}
inline float sample(const float* plane, const Taps& t) {
  return t.ok ? plane[t.q[0]] * t.w[0] + plane[t.q[1]] * t.w[1] + plane[t.q[2]] * t.w[2] + plane[t.q[3]] * t.w[3]
              : 0.0f;
}

extern "C" {

// Stage-1 composition (flowctrl/flow/compose.py): with p' = p + local(p),
// flow = local + camera(p') (bilinear, border padding) and, when cam_valid is given,
// valid = [bilinear(cam_valid as 0/1, zeros padding)(p') > 0.5] and p + flow inside
// (-0.5, W-0.5) x (-0.5, H-0.5) (without cam_valid: only the inside test).
// local, camera (T,2,H,W) float; cam_valid (T,H,W) bytes or null; camera may be null (flow = local).
// out_flow (T,2,H,W) and out_valid (T,H,W) are fully written.
int fc_compose_f32(const float* local, const float* camera, const unsigned char* cam_valid, float* out_flow,
                   unsigned char* out_valid, int64_t T, int64_t H, int64_t W, int threads) {
  const int64_t HW = H * W;
  if (T <= 0 || HW <= 0) return 0;
  threads = std::max(1, threads);
  const float xmax = static_cast<float>(W) - 0.5f, ymax = static_cast<float>(H) - 0.5f;
  parallel_dynamic(T * H, threads, 16, [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      const int64_t t = r / H, y = r % H;
      const float yf = static_cast<float>(y);
      const float* lx = local + t * 2 * HW;
      const float* ly = lx + HW;
      float* ox = out_flow + t * 2 * HW;
      float* oy = ox + HW;
      unsigned char* ov = out_valid + t * HW;
      for (int64_t xc = 0; xc < W; ++xc) {
        const int64_t p = y * W + xc;
        const float xf = static_cast<float>(xc);
        float fx = lx[p], fy = ly[p];
        bool ok = true;
        if (camera != nullptr) {
          const float qx = xf + fx, qy = yf + fy;
          const Taps tb = bilinear_taps(qx, qy, H, W, true);
          const float* cx = camera + t * 2 * HW;
          fx = fx + sample(cx, tb);
          fy = fy + sample(cx + HW, tb);
          if (cam_valid != nullptr) {
            // inside [0, W-1] x [0, H-1] both paddings clamp nothing: the same taps
            const bool inside = qx >= 0.0f && qx <= static_cast<float>(W - 1) && qy >= 0.0f &&
                                qy <= static_cast<float>(H - 1);
            const Taps tz = inside ? tb : bilinear_taps(qx, qy, H, W, false);
            const unsigned char* v = cam_valid + t * HW;
            float vs = 0.0f;
            if (tz.ok) {
              const float v0 = v[tz.q[0]] ? 1.0f : 0.0f, v1 = v[tz.q[1]] ? 1.0f : 0.0f;
              const float v2 = v[tz.q[2]] ? 1.0f : 0.0f, v3 = v[tz.q[3]] ? 1.0f : 0.0f;
              vs = v0 * tz.w[0] + v1 * tz.w[1] + v2 * tz.w[2] + v3 * tz.w[3];
            }
            ok = vs > 0.5f;
          }
        }
        ox[p] = fx;
        oy[p] = fy;
        const float tx = xf + fx, ty = yf + fy;
        ov[p] = ok && tx > -0.5f && tx < xmax && ty > -0.5f && ty < ymax;
      }
    }
  });
  return 0;
}

// Push-pull hole fill of flowctrl/render/fill.py (push_pull_fill_holes) for a binary hole mask.
// video (N,C,H,W) is filled in place: known pixels stay bit-exact, holes take the pushed colour.
// holes (N,H,W) bytes, nonzero = missing. The pyramid depth is the frame's own (the first level at
// which the frame has weight > 0 everywhere, or 1x1), as in the tensor code: frames are independent. Same operations in the same order as the tensor code:
// pull sum ((a + b) + c) + d of the 2x2 block (zero padded), w' = min(s, 1), c' = sum_c * (w' / max(s, eps));
// top colour c / max(w, eps); push c += up2x(colour) * (1 - w) with the separable 0.75 / 0.25 upsample
// (horizontal first, edge clamped).
int fc_push_pull_f32(float* video, const unsigned char* holes, int64_t N, int64_t C, int64_t H, int64_t W,
                     float eps, int threads) {
  if (N <= 0 || H <= 0 || W <= 0) return 0;
  // level sizes down to 1x1
  std::vector<int64_t> hs{H}, ws{W};
  while (hs.back() > 1 || ws.back() > 1) {
    hs.push_back((hs.back() + 1) / 2);
    ws.push_back((ws.back() + 1) / 2);
  }
  const int top_max = static_cast<int>(hs.size()) - 1;
  // 1) per frame, the first level where every pixel has some known pixel below it (OR pyramid)
  std::vector<int> depth(N, 0);
  parallel_dynamic(N, threads, 1, [&](int64_t nb, int64_t ne) {
    std::vector<unsigned char> cur, nxt;
    for (int64_t n = nb; n < ne; ++n) {
      const unsigned char* m = holes + n * H * W;
      cur.resize(H * W);
      bool all = true;
      for (int64_t i = 0; i < H * W; ++i) {
        cur[i] = m[i] == 0;
        all = all && cur[i];
      }
      int k = 0;
      while (!all && k < top_max) {
        const int64_t h = hs[k], w = ws[k], h1 = hs[k + 1], w1 = ws[k + 1];
        nxt.assign(h1 * w1, 0);
        for (int64_t y = 0; y < h; ++y)
          for (int64_t x = 0; x < w; ++x) nxt[(y >> 1) * w1 + (x >> 1)] |= cur[y * w + x];
        all = true;
        for (int64_t i = 0; i < h1 * w1; ++i) all = all && nxt[i];
        cur.swap(nxt);
        ++k;
      }
      depth[n] = k;
    }
  });
  const int Dmax = *std::max_element(depth.begin(), depth.end());
  if (Dmax == 0) return 0;  // no holes: c / 1 == c
  // 2) per frame: pull to the frame's own level D, then push back down (each frame is filled on its
  // own, so a frame's result does not depend on the other frames of the call). Level 0 is read from
  // video and the mask directly (holes count as 0, the tensor code's masked_fill), so it is never copied.
  parallel_dynamic(N, threads, 1, [&](int64_t nb, int64_t ne) {
    std::vector<std::vector<float>> cl(Dmax + 1), wl(Dmax + 1);
    std::vector<float> zeros(W + 2, 0.0f), ratio, masked(2 * (W + 1));
    for (int64_t n = nb; n < ne; ++n) {
      const int D = depth[n];
      if (D == 0) continue;  // no holes in this frame
      float* v = video + n * C * H * W;
      const unsigned char* m = holes + n * H * W;
      wl[0].resize(H * W);
      for (int64_t i = 0; i < H * W; ++i) wl[0][i] = m[i] ? 0.0f : 1.0f;
      for (int k = 0; k < D; ++k) {
        const int64_t h = hs[k], w = ws[k], h1 = hs[k + 1], w1 = ws[k + 1];
        cl[k + 1].resize(C * h1 * w1);
        wl[k + 1].resize(h1 * w1);
        ratio.resize(h1 * w1);
        // 2x2 sums ((a + b) + c) + d, a = (2i, 2j), b = (2i+1, 2j), c = (2i, 2j+1), d = (2i+1, 2j+1);
        // rows / columns past the edge read zeros (the tensor code's zero padding)
        auto pool = [&](const float* p, float* q, const float* scale) {
          for (int64_t i = 0; i < h1; ++i) {
            const float* r0 = p + 2 * i * w;
            const float* r1 = 2 * i + 1 < h ? r0 + w : zeros.data();
            for (int64_t j = 0; j < w1; ++j) {
              const int64_t x = 2 * j;
              const float c0 = x + 1 < w ? r0[x + 1] : 0.0f, c1 = x + 1 < w ? r1[x + 1] : 0.0f;
              const float s = ((r0[x] + r1[x]) + c0) + c1;
              q[i * w1 + j] = scale ? s * scale[i * w1 + j] : s;
            }
          }
        };
        pool(wl[k].data(), wl[k + 1].data(), nullptr);
        for (int64_t i = 0; i < h1 * w1; ++i) {
          const float s = wl[k + 1][i], wn = std::min(s, 1.0f);
          wl[k + 1][i] = wn;
          ratio[i] = wn / std::max(s, eps);
        }
        for (int64_t c = 0; c < C; ++c) {
          if (k > 0) {
            pool(cl[k].data() + c * h * w, cl[k + 1].data() + c * h1 * w1, ratio.data());
            continue;
          }
          const float* p = v + c * H * W;
          float* q = cl[1].data() + c * h1 * w1;
          for (int64_t i = 0; i < h1; ++i) {
            // the two source rows with holes zeroed (row 2i+1 past the edge: zeros)
            float* m0 = masked.data();
            float* m1 = m0 + (W + 1);
            for (int64_t x = 0; x < W; ++x) m0[x] = m[2 * i * W + x] ? 0.0f : p[2 * i * W + x];
            if (2 * i + 1 < H) {
              for (int64_t x = 0; x < W; ++x) m1[x] = m[(2 * i + 1) * W + x] ? 0.0f : p[(2 * i + 1) * W + x];
            } else {
              std::fill(m1, m1 + W, 0.0f);
            }
            m0[W] = 0.0f;
            m1[W] = 0.0f;
            for (int64_t j = 0; j < w1; ++j) {
              const int64_t x = 2 * j;
              const float s = ((m0[x] + m1[x]) + m0[x + 1]) + m1[x + 1];
              q[i * w1 + j] = s * ratio[i * w1 + j];
            }
          }
        }
      }
      {  // top colour
        const int64_t hw = hs[D] * ws[D];
        for (int64_t c = 0; c < C; ++c)
          for (int64_t i = 0; i < hw; ++i) cl[D][c * hw + i] = cl[D][c * hw + i] / std::max(wl[D][i], eps);
      }
      for (int k = D - 1; k >= 0; --k) {
        const int64_t h = hs[k], w = ws[k], h1 = hs[k + 1], w1 = ws[k + 1];
        float* dst = k == 0 ? v : cl[k].data();
        const float* fine_c = k == 0 ? nullptr : cl[k].data();  // level 0: holes hold colour 0
        const float* wk = wl[k].data();
        std::vector<unsigned char> row_open(h);  // rows with a pixel of weight < 1 (others unchanged)
        for (int64_t y = 0; y < h; ++y) {
          bool any = false;
          for (int64_t x = 0; x < w; ++x) any |= wk[y * w + x] < 1.0f;
          row_open[y] = any;
        }
        for (int64_t c = 0; c < C; ++c) {
          const float* t = cl[k + 1].data() + c * h1 * w1;
          // horizontal pass of coarse row r at fine column x
          auto hor = [&](int64_t r, int64_t x) {
            const float* row = t + r * w1;
            const int64_t j = x >> 1;
            if ((x & 1) == 0) return j >= 1 ? row[j] * 0.75f + 0.25f * row[j - 1] : row[0];
            return j < w1 - 1 ? row[j] * 0.75f + 0.25f * row[j + 1] : row[w1 - 1];
          };
          for (int64_t y = 0; y < h; ++y) {
            if (!row_open[y]) continue;
            const int64_t i = y >> 1;
            int64_t r2 = -1;  // second coarse row, -1 at the clamped edges
            if ((y & 1) == 0 && i >= 1) r2 = i - 1;
            if ((y & 1) == 1 && i < h1 - 1) r2 = i + 1;
            for (int64_t x = 0; x < w; ++x) {
              const float wt = wk[y * w + x];
              if (!(wt < 1.0f)) continue;  // known: c + up * 0 == c
              const float a = hor(i, x);
              const float up = r2 >= 0 ? a * 0.75f + 0.25f * hor(r2, x) : a;
              const int64_t idx = c * h * w + y * w + x;
              dst[idx] = (fine_c ? fine_c[idx] : 0.0f) + up * (1.0f - wt);
            }
          }
        }
      }
    }
  });
  return 0;
}

// Float frames (N,C,H,W) in [0, 1] -> uint8 (N,H,W,C) in one pass: trunc(clamp(x * 255 + 0.5, 0, 255)),
// the steps of flowctrl/video_io.py's tensor conversion (mul, add, clamp, cast, permute). NaN -> 0.
int fc_to_uint8_hwc_f32(const float* x, unsigned char* out, int64_t N, int64_t C, int64_t H, int64_t W,
                        int threads) {
  if (N <= 0 || C <= 0 || H <= 0 || W <= 0) return 0;
  const int64_t HW = H * W;
  parallel_dynamic(N * H, threads, 16, [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      const int64_t n = r / H, y = r % H;
      const float* src = x + n * C * HW + y * W;
      unsigned char* dst = out + (n * HW + y * W) * C;
      for (int64_t c = 0; c < C; ++c) {
        const float* s = src + c * HW;
        for (int64_t i = 0; i < W; ++i) {
          float v = s[i] * 255.0f;
          v = v + 0.5f;
          v = v > 0.0f ? (v < 255.0f ? v : 255.0f) : 0.0f;  // NaN fails v > 0: 0
          dst[i * C + c] = static_cast<unsigned char>(static_cast<int>(v));
        }
      }
    }
  });
  return 0;
}

int fc_cpu_abi_version() { return 8; }

// x (N,C,H,W), flow (N,2,H,W), weight (N,1,H,W) or null; out (N,C,H,W) and norm (N,1,H,W) are
// fully written (norm may be null). Returns 0 on success.
// x_stride: elements between consecutive images of x; 0 reads one image for all N (a broadcast
// source, e.g. the same reference image splatted along every frame's flow, without a copy).
int fc_splat_strided_f32(const float* x, int64_t x_stride, const float* flow, const float* weight, float* out,
                         float* norm, int64_t N, int64_t C, int64_t H, int64_t W, int mode, int threads) {
  if (mode < kSum || mode > kSoftmax) return 1;
  const int64_t HW = H * W;
  if (N <= 0 || HW <= 0) return 0;
  const int64_t S = C + 1;
  const bool divide = mode != kSum;
  threads = std::max(1, threads);
  if (HW * N * S < (int64_t(1) << 15)) threads = 1;  // thread start-up dominates tiny inputs

  if (N >= threads) {
    // images are handed out one at a time: on a shared machine a descheduled thread then delays
    // the call by at most one image instead of its whole static share
    std::atomic<int64_t> next(0);
    parallel_for(threads, threads, [&](int64_t, int64_t, int) {
      std::vector<float> acc(static_cast<size_t>(HW * S));
      std::vector<float> ebuf(weight != nullptr ? HW : 0);
      for (int64_t n = next.fetch_add(1); n < N; n = next.fetch_add(1)) {
        const float* en = nullptr;
        if (weight != nullptr) {
          prepare_weight(weight + n * HW, ebuf.data(), HW, mode);
          en = ebuf.data();
        }
        std::fill(acc.begin(), acc.end(), 0.0f);
        splat_rows_any(x + n * x_stride, flow + n * 2 * HW, en, acc.data(), C, H, W, 0, H);
        const float* bufs[1] = {acc.data()};
        finish_any(bufs, 1, out + n * C * HW, norm != nullptr ? norm + n * HW : nullptr, C, HW, divide, 0, HW);
      }
    });
    return 0;
  }

  // Few images: split rows between threads (private buffers), then finish pixel ranges in parallel.
  const int T = static_cast<int>(std::min<int64_t>(threads, H));
  std::vector<std::vector<float>> acc(T, std::vector<float>(static_cast<size_t>(HW * S)));
  std::vector<const float*> bufs(T);
  for (int t = 0; t < T; ++t) bufs[t] = acc[t].data();
  std::vector<float> ebuf(weight != nullptr ? HW : 0);
  for (int64_t n = 0; n < N; ++n) {
    const float* en = nullptr;
    if (weight != nullptr) {
      prepare_weight(weight + n * HW, ebuf.data(), HW, mode);
      en = ebuf.data();
    }
    parallel_for(H, T, [&](int64_t rb, int64_t re, int t) {
      std::fill(acc[t].begin(), acc[t].end(), 0.0f);
      splat_rows_any(x + n * x_stride, flow + n * 2 * HW, en, acc[t].data(), C, H, W, rb, re);
    });
    parallel_for(HW, T, [&](int64_t pb, int64_t pe, int) {
      finish_any(bufs.data(), T, out + n * C * HW, norm != nullptr ? norm + n * HW : nullptr, C, HW, divide, pb, pe);
    });
  }
  return 0;
}

// out(p) = x(p + flow(p)) bilinear; border != 0 clamps the position into the image, else taps
// outside read 0. x (N,C,H,W), flow (N,2,H,W), out (N,C,H,W). Returns 0 on success.
int fc_backward_warp_f32(const float* x, const float* flow, float* out, int64_t N, int64_t C, int64_t H, int64_t W,
                         int border, int threads) {
  const int64_t HW = H * W;
  if (N <= 0 || HW <= 0) return 0;
  threads = std::max(1, threads);
  if (HW * N * (C + 1) < (int64_t(1) << 15)) threads = 1;
  parallel_dynamic(N * H, threads, 16, [&](int64_t rb, int64_t re) {
    switch (C) {
      case 1: warp_rows<1>(x, flow, out, C, H, W, border != 0, rb, re); break;
      case 2: warp_rows<2>(x, flow, out, C, H, W, border != 0, rb, re); break;
      case 3: warp_rows<3>(x, flow, out, C, H, W, border != 0, rb, re); break;
      case 4: warp_rows<4>(x, flow, out, C, H, W, border != 0, rb, re); break;
      default: warp_rows<0>(x, flow, out, C, H, W, border != 0, rb, re); break;
    }
  });
  return 0;
}

// x (N,C,H,W) contiguous: fc_splat_strided_f32 with x_stride = C*H*W.
int fc_splat_f32(const float* x, const float* flow, const float* weight, float* out, float* norm, int64_t N,
                 int64_t C, int64_t H, int64_t W, int mode, int threads) {
  return fc_splat_strided_f32(x, C * H * W, flow, weight, out, norm, N, C, H, W, mode, threads);
}

// Camera reprojection flow of one reference frame under T cameras (flowctrl/flow/camera.py,
// camera_flow, float32 path). Per frame t: E = K_t R_t K_0^-1 - I (3x3, row-major), q = K_t t_t;
// Ep = E [x, y, 1], dz = z0 (Ep)_z + q_z, z = z0 + dz,
// flow = (z0 (Ep)_xy + q_xy - p dz) / z (z replaced by 1 where z <= min_depth),
// valid = z > min_depth and p + flow inside (-0.5, W-0.5) x (-0.5, H-0.5); with `occlusion` also
// not hidden: a z-buffer over the rounded (half to even) target pixels keeps the nearest z, and a
// pixel whose z exceeds that nearest by more than the factor `tol` (1 + tolerance) is occluded.
// z0 (H*W), E (T*9), q (T*3); flow (T,2,H,W) and valid (T,H,W) bytes are fully written.
int fc_camera_flow_f32(const float* z0, const float* E, const float* q, float* flow, unsigned char* valid, int64_t T,
                       int64_t H, int64_t W, float min_depth, float tol, int occlusion, int threads) {
  const int64_t HW = H * W;
  if (T <= 0 || HW <= 0) return 0;
  threads = std::max(1, threads);
  std::atomic<int64_t> next(0);
  parallel_for(threads, threads, [&](int64_t, int64_t, int) {
    std::vector<float> zbuf(occlusion ? HW : 0), zt(occlusion ? HW : 0);
    std::vector<int32_t> target(occlusion ? HW : 0);
    for (int64_t t = next.fetch_add(1); t < T; t = next.fetch_add(1)) {
      const float* e = E + t * 9;
      const float* qt = q + t * 3;
      float* fx = flow + t * 2 * HW;
      float* fy = fx + HW;
      unsigned char* v = valid + t * HW;
      const float xmax = static_cast<float>(W) - 0.5f, ymax = static_cast<float>(H) - 0.5f;
      for (int64_t y = 0; y < H; ++y) {
        const float yf = static_cast<float>(y);
        for (int64_t xc = 0; xc < W; ++xc) {
          const int64_t p = y * W + xc;
          const float xf = static_cast<float>(xc);
          const float ex = e[0] * xf + e[1] * yf + e[2];
          const float ey = e[3] * xf + e[4] * yf + e[5];
          const float ez = e[6] * xf + e[7] * yf + e[8];
          const float zr = z0[p];
          const float dz = zr * ez + qt[2];
          const float z = zr + dz;
          const bool front = z > min_depth;
          const float sz = front ? z : 1.0f;
          const float u = (zr * ex + qt[0] - xf * dz) / sz;
          const float w = (zr * ey + qt[1] - yf * dz) / sz;
          fx[p] = u;
          fy[p] = w;
          const float px = xf + u, py = yf + w;
          v[p] = front && px > -0.5f && px < xmax && py > -0.5f && py < ymax;
          if (occlusion) zt[p] = v[p] ? z : INFINITY;
        }
        if (!occlusion) continue;
        for (int64_t xc = 0; xc < W; ++xc) {  // target pixel: round half to even, as torch.round
          const int64_t p = y * W + xc;
          float cx = round_even(clampf(static_cast<float>(xc) + fx[p], -1.0f, static_cast<float>(W)));
          float cy = round_even(clampf(yf + fy[p], -1.0f, static_cast<float>(H)));
          cx = cx == cx ? clampf(cx, 0.0f, static_cast<float>(W - 1)) : 0.0f;  // NaN reads pixel 0
          cy = cy == cy ? clampf(cy, 0.0f, static_cast<float>(H - 1)) : 0.0f;
          target[p] = static_cast<int32_t>(cy) * static_cast<int32_t>(W) + static_cast<int32_t>(cx);
        }
      }
      if (!occlusion) continue;
      std::fill(zbuf.begin(), zbuf.end(), INFINITY);
      for (int64_t p = 0; p < HW; ++p) {
        float& b = zbuf[target[p]];
        b = zt[p] < b ? zt[p] : b;
      }
      for (int64_t p = 0; p < HW; ++p)
        if (v[p] && zt[p] > zbuf[target[p]] * tol) v[p] = 0;
    }
  });
  return 0;
}

}  // extern "C"
