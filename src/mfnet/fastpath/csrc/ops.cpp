// The kernels of fiber_conv.cpp as PyTorch operators in the `mfnet` namespace.
//
// Every operator writes into tensors its caller allocated (the schema marks them `(a!)`) and returns nothing;
// mfnet.fastpath.native registers their fake implementations and builds the functional operators (with autograd)
// that the models call. The work of each kernel is a list of items shared through an mf_sched by the threads of
// PyTorch's intra-op pool (at::parallel_for), so torch.set_num_threads governs them and no other pool exists.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <set>

#include "fiber_conv.h"

namespace {

constexpr int kRowsPerItem = 8;  // MF_ROWS of fiber_conv.cpp: output rows per work item into channels-last output
constexpr int kBnBlockRows = 256;  // MF_BN_BLOCK of fiber_conv.cpp

// Runs fn(sched, 0, items) on up to at::get_num_threads() threads of the intra-op pool, which claim the items one at
// a time. fn returns non-zero when its thread could not run (no scratch memory): another thread then does its
// items. Throws when no thread could run.
template <class F>
void run_items(int64_t items, F fn) {
    if (items <= 0) return;
    const int64_t threads = std::min<int64_t>(at::get_num_threads(), items);
    if (threads <= 1 || at::in_parallel_region()) {
        TORCH_CHECK(fn(nullptr, 0, static_cast<int>(items)) == 0, "mfnet: the kernel could not allocate its scratch");
        return;
    }
    mf_sched sched{0, 0};
    std::atomic<int> ran{0};
    at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
            if (fn(&sched, 0, static_cast<int>(items)) == 0) ran.fetch_add(1);
    });
    TORCH_CHECK(ran.load() > 0, "mfnet: the kernel could not allocate its scratch");
}

void check_float(const at::Tensor &t, const char *name) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, "mfnet: ", name, " must be a float32 CPU tensor");
}

// A channels-last (N, C, T, H, W) activation.
void check_cl3d(const at::Tensor &t, const char *name) {
    check_float(t, name);
    TORCH_CHECK(t.dim() == 5 && t.is_contiguous(at::MemoryFormat::ChannelsLast3d), "mfnet: ", name,
                " must be a channels-last-3d (N, C, T, H, W) tensor");
}

void check_dense(const at::Tensor &t, const char *name) {
    check_float(t, name);
    TORCH_CHECK(t.is_contiguous(), "mfnet: ", name, " must be contiguous");
}

// Data of a tensor, or nullptr for an absent or empty one (an empty tensor stands for "not written").
float *ptr(const at::Tensor &t) { return t.numel() ? t.data_ptr<float>() : nullptr; }
const float *ptr(const std::optional<at::Tensor> &t) {
    return t.has_value() && t->numel() ? t->data_ptr<float>() : nullptr;
}

int I(int64_t v) { return static_cast<int>(v); }

int64_t row_blocks(int64_t h) { return (h + kRowsPerItem - 1) / kRowsPerItem; }

// x (N, C, T, H, W) channels-last, relu(x * scale + shift) (or x) into the interior of the padded group-major
// buffer (N, G, T + 2pd, H + 2ph, C/G, Wp).
void pack(const at::Tensor &x, const std::optional<at::Tensor> &scale, const std::optional<at::Tensor> &shift,
          const at::Tensor &buf, int64_t pd, int64_t ph, int64_t pw) {
    check_cl3d(x, "x");
    check_dense(buf, "buf");
    const int64_t n = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4), g = buf.size(1);
    TORCH_CHECK(buf.dim() == 6 && buf.size(4) * g == c, "mfnet::pack: the buffer does not match the input");
    const float *s = ptr(scale), *b = ptr(shift);
    const float *px = x.data_ptr<float>();
    float *pb = buf.data_ptr<float>();
    run_items(n * t * h, [&](mf_sched *sched, int i0, int i1) {
        mf_pack(px, s, b, pb, I(t), I(h), I(w), I(g), I(c / g), I(buf.size(2)), I(buf.size(3)), I(buf.size(5)),
                I(pd), I(ph), I(pw), sched, i0, i1);
        return 0;
    });
}

// The multiplexer and the BN-ReLU after it (see mf_mux_pack): into `buf` (padded group-major) when it is not
// empty, else into channels-last `out`; with proj_scale, the projection's BN-ReLU into `proj` too.
void mux_pack(const at::Tensor &x, const at::Tensor &scale, const at::Tensor &shift, const at::Tensor &w1,
              const at::Tensor &b1, const at::Tensor &w2, const at::Tensor &b2, const at::Tensor &out_scale,
              const at::Tensor &out_shift, const at::Tensor &buf, const at::Tensor &out, at::IntArrayRef padding,
              int64_t rows, const std::optional<at::Tensor> &proj_scale, const std::optional<at::Tensor> &proj_shift,
              const at::Tensor &proj, at::IntArrayRef proj_stride) {
    check_cl3d(x, "x");
    for (const auto *t : {&scale, &shift, &w1, &b1, &w2, &b2, &out_scale, &out_shift}) check_dense(*t, "a weight");
    const int64_t n = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
    TORCH_CHECK(w1.dim() == 2 && w1.size(0) == c && w2.size(1) == c, "mfnet::mux_pack: weights do not match");
    const bool packed = buf.numel() > 0;
    if (packed) check_dense(buf, "buf");
    else check_cl3d(out, "out");
    if (proj.numel()) check_cl3d(proj, "proj");
    const int64_t g = packed ? buf.size(1) : 1, ci = packed ? buf.size(4) : c;
    const int64_t dp = packed ? buf.size(2) : t, hp = packed ? buf.size(3) : h, wp = packed ? buf.size(5) : w;
    const float *px = x.data_ptr<float>(), *sw = ptr(proj_scale), *tw = ptr(proj_shift);
    float *pbuf = ptr(buf), *pout = packed ? nullptr : ptr(out), *pproj = sw ? ptr(proj) : nullptr;
    run_items((n * t * h + rows - 1) / rows, [&](mf_sched *sched, int i0, int i1) {
        return mf_mux_pack(px, scale.data_ptr<float>(), shift.data_ptr<float>(), w1.data_ptr<float>(),
                           b1.data_ptr<float>(), w2.data_ptr<float>(), b2.data_ptr<float>(), I(w1.size(1)),
                           out_scale.data_ptr<float>(), out_shift.data_ptr<float>(), pbuf, pout, I(n), I(t), I(h),
                           I(w), I(g), I(ci), I(dp), I(hp), I(wp), I(padding[0]), I(padding[1]), I(padding[2]),
                           I(rows), sw, tw, pproj, I(proj_stride[0]), I(proj_stride[1]), I(proj_stride[2]), sched, i0,
                           i1);
    });
}

// The grouped convolution of a padded group-major buffer with a weight (G, KT, KH, KW, CI, CO) (see mf_conv):
// into the interior of `out_buf` (another such buffer, padding out_padding) when it is not empty, else into
// channels-last `out` (+ add). out_size: the output's (T, H, W).
void conv(const at::Tensor &buf, const at::Tensor &weight, const at::Tensor &bias, at::IntArrayRef out_size,
          int64_t temporal_stride, bool relu, const at::Tensor &out_buf, at::IntArrayRef out_padding,
          const at::Tensor &out, const std::optional<at::Tensor> &add, const std::optional<at::Tensor> &wino) {
    check_dense(buf, "buf");
    check_dense(weight, "weight");
    check_dense(bias, "bias");
    TORCH_CHECK(buf.dim() == 6 && weight.dim() == 6 && weight.size(0) == buf.size(1) && weight.size(4) == buf.size(4),
                "mfnet::conv: the weight does not match the buffer");
    const int64_t n = buf.size(0), g = buf.size(1), d = out_size[0], h = out_size[1], w = out_size[2];
    const bool into_buffer = out_buf.numel() > 0;
    if (into_buffer) check_dense(out_buf, "out_buf");
    else check_cl3d(out, "out");
    if (add.has_value() && add->numel()) check_cl3d(*add, "add");
    const int64_t items = into_buffer ? n * g * d : n * d * row_blocks(h);
    run_items(items, [&](mf_sched *sched, int i0, int i1) {
        mf_conv(buf.data_ptr<float>(), weight.data_ptr<float>(), bias.data_ptr<float>(), I(d), I(h), I(w), I(g),
                I(weight.size(4)), I(weight.size(5)), I(weight.size(1)), I(weight.size(2)), I(weight.size(3)),
                I(temporal_stride), I(buf.size(2)), I(buf.size(3)), I(buf.size(5)), relu ? 1 : 0, ptr(out_buf),
                I(out_padding[0]), I(out_padding[1]), I(out_padding[2]), into_buffer ? I(out_buf.size(5)) : 0,
                into_buffer ? nullptr : ptr(out), ptr(add), ptr(wino), sched, i0, i1);
        return 0;
    });
}

// relu(conv(buf)) followed by a dense 1x1x1 convolution (+ add) (+ the folded projection of `extra`) into
// channels-last `out` (see mf_conv_dense). out_size: conv's output (T, H, W) at spatial_stride.
void conv_dense(const at::Tensor &buf, const at::Tensor &weight, const at::Tensor &bias, at::IntArrayRef out_size,
                int64_t temporal_stride, const at::Tensor &dense_weight, const at::Tensor &dense_bias,
                const at::Tensor &out, const std::optional<at::Tensor> &add, const std::optional<at::Tensor> &extra,
                int64_t extra_channels, int64_t spatial_stride) {
    check_dense(buf, "buf");
    check_dense(weight, "weight");
    check_dense(dense_weight, "dense_weight");
    check_cl3d(out, "out");
    if (add.has_value() && add->numel()) check_cl3d(*add, "add");
    if (extra.has_value() && extra->numel()) check_cl3d(*extra, "extra");
    TORCH_CHECK(buf.dim() == 6 && weight.dim() == 6 && weight.size(0) == buf.size(1) && weight.size(4) == buf.size(4),
                "mfnet::conv_dense: the weight does not match the buffer");
    const int64_t n = buf.size(0), g = buf.size(1), d = out_size[0], h = out_size[1], w = out_size[2];
    run_items(n * d * row_blocks(h), [&](mf_sched *sched, int i0, int i1) {
        return mf_conv_dense(buf.data_ptr<float>(), weight.data_ptr<float>(), bias.data_ptr<float>(), I(d), I(h),
                             I(w), I(g), I(weight.size(4)), I(weight.size(5)), I(weight.size(1)), I(weight.size(2)),
                             I(weight.size(3)), I(temporal_stride), I(buf.size(2)), I(buf.size(3)), I(buf.size(5)), 1,
                             dense_weight.data_ptr<float>(), dense_bias.data_ptr<float>(), I(dense_weight.size(1)),
                             out.data_ptr<float>(), ptr(add), ptr(extra), I(extra_channels), I(spatial_stride), sched,
                             i0, i1);
    });
}

// A unit's conv_m1 and a 1 x kh x kw conv_m2 (+ shortcut) in one pass over the packed buffer (see mf_tail).
void tail(const at::Tensor &buf, const at::Tensor &w1, const at::Tensor &b1, const at::Tensor &w2,
          const at::Tensor &b2, at::IntArrayRef out_size, int64_t temporal_stride, const at::Tensor &out,
          const at::Tensor &shortcut, const std::optional<at::Tensor> &wino1, const std::optional<at::Tensor> &wino2) {
    check_dense(buf, "buf");
    check_dense(w1, "w1");
    check_dense(w2, "w2");
    check_cl3d(out, "out");
    check_cl3d(shortcut, "shortcut");
    TORCH_CHECK(buf.dim() == 6 && w1.dim() == 6 && w2.dim() == 6 && w1.size(0) == buf.size(1),
                "mfnet::tail: the weights do not match the buffer");
    TORCH_CHECK(shortcut.sizes() == out.sizes(), "mfnet::tail: the shortcut's shape differs from the output's");
    const int64_t n = buf.size(0), g = buf.size(1), d = out_size[0], h = out_size[1], w = out_size[2];
    run_items(n * d, [&](mf_sched *sched, int i0, int i1) {
        return mf_tail(buf.data_ptr<float>(), w1.data_ptr<float>(), b1.data_ptr<float>(), w2.data_ptr<float>(),
                       b2.data_ptr<float>(), I(d), I(h), I(w), I(g), I(w1.size(4)), I(w1.size(5)), I(w2.size(5)),
                       I(w1.size(1)), I(w1.size(2)), I(w1.size(3)), I(temporal_stride), I(w2.size(2)), I(w2.size(3)),
                       I(buf.size(2)), I(buf.size(3)), I(buf.size(5)), out.data_ptr<float>(),
                       shortcut.data_ptr<float>(), ptr(wino1), ptr(wino2), sched, i0, i1);
    });
}

// The weight gradient (G, KT, KH, KW, CI, CO) of a grouped convolution (see mf_conv_wgrad). out_size: the
// output's (T, H, W); offset: where the gradient's data starts in its buffer.
void conv_wgrad(const at::Tensor &bx, const at::Tensor &bg, const at::Tensor &dw, const at::Tensor &scratch,
                at::IntArrayRef out_size, int64_t temporal_stride, at::IntArrayRef offset) {
    for (const auto *t : {&bx, &bg, &dw, &scratch}) check_dense(*t, "a buffer");
    TORCH_CHECK(bx.dim() == 6 && bg.dim() == 6 && dw.dim() == 6, "mfnet::conv_wgrad: buffers of 6 dimensions");
    const int64_t g = bx.size(1);
    run_items(g, [&](mf_sched *sched, int i0, int i1) {
        mf_conv_wgrad(bx.data_ptr<float>(), bg.data_ptr<float>(), dw.data_ptr<float>(), scratch.data_ptr<float>(),
                      I(bx.size(0)), I(out_size[0]), I(out_size[1]), I(out_size[2]), I(g), I(dw.size(4)),
                      I(dw.size(5)), I(dw.size(1)), I(dw.size(2)), I(dw.size(3)), I(temporal_stride), I(bx.size(2)),
                      I(bx.size(3)), I(bx.size(5)), I(offset[0]), I(offset[1]), I(offset[2]), I(bg.size(5)), sched,
                      i0, i1);
        return 0;
    });
}

// Channels-last (N, C, T, H, W) as rows (P, C).
int64_t rows_of(const at::Tensor &x) { return x.numel() / x.size(1); }
int64_t blocks_of(int64_t rows) { return (rows + kBnBlockRows - 1) / kBnBlockRows; }

// y = relu(x * scale + shift) per channel.
void bn_relu(const at::Tensor &x, const at::Tensor &scale, const at::Tensor &shift, const at::Tensor &y) {
    check_cl3d(x, "x");
    check_cl3d(y, "y");
    TORCH_CHECK(x.size(1) % 8 == 0 && scale.numel() == x.size(1), "mfnet::bn_relu: channels a multiple of 8");
    const int64_t p = rows_of(x);
    run_items(blocks_of(p), [&](mf_sched *sched, int i0, int i1) {
        mf_bn_relu(x.data_ptr<float>(), scale.data_ptr<float>(), shift.data_ptr<float>(), y.data_ptr<float>(), p,
                   I(x.size(1)), sched, i0, i1);
        return 0;
    });
}

// Per block of rows: s1 = sum(x - k), s2 = sum((x - k)^2), (blocks, C) float64.
void bn_stats(const at::Tensor &x, const at::Tensor &k, const at::Tensor &s1, const at::Tensor &s2) {
    check_cl3d(x, "x");
    TORCH_CHECK(s1.scalar_type() == at::kDouble && s2.scalar_type() == at::kDouble && s1.is_contiguous() &&
                    s2.is_contiguous() && s1.numel() == blocks_of(rows_of(x)) * x.size(1),
                "mfnet::bn_stats: sums must be contiguous float64 (blocks, C)");
    const int64_t p = rows_of(x);
    run_items(blocks_of(p), [&](mf_sched *sched, int i0, int i1) {
        mf_bn_stats(x.data_ptr<float>(), k.data_ptr<float>(), s1.data_ptr<double>(), s2.data_ptr<double>(), p,
                    I(x.size(1)), sched, i0, i1);
        return 0;
    });
}

// Per block of rows: s1 = sum(dz), s2 = sum(dz * (x - mean)), dz = dy where x * scale + shift > 0.
void bn_relu_grad_sums(const at::Tensor &x, const at::Tensor &dy, const at::Tensor &scale, const at::Tensor &shift,
                       const at::Tensor &mean, const at::Tensor &s1, const at::Tensor &s2) {
    check_cl3d(x, "x");
    check_cl3d(dy, "dy");
    TORCH_CHECK(s1.scalar_type() == at::kDouble && s2.scalar_type() == at::kDouble &&
                    s1.numel() == blocks_of(rows_of(x)) * x.size(1),
                "mfnet::bn_relu_grad_sums: sums must be contiguous float64 (blocks, C)");
    const int64_t p = rows_of(x);
    run_items(blocks_of(p), [&](mf_sched *sched, int i0, int i1) {
        mf_bn_relu_grad_sums(x.data_ptr<float>(), dy.data_ptr<float>(), scale.data_ptr<float>(),
                             shift.data_ptr<float>(), mean.data_ptr<float>(), s1.data_ptr<double>(),
                             s2.data_ptr<double>(), p, I(x.size(1)), sched, i0, i1);
        return 0;
    });
}

// dx = a * dz - b - (x - mean) * d per channel.
void bn_relu_grad_input(const at::Tensor &x, const at::Tensor &dy, const at::Tensor &scale, const at::Tensor &shift,
                        const at::Tensor &mean, const at::Tensor &a, const at::Tensor &b, const at::Tensor &d,
                        const at::Tensor &dx) {
    check_cl3d(x, "x");
    check_cl3d(dy, "dy");
    check_cl3d(dx, "dx");
    const int64_t p = rows_of(x);
    run_items(blocks_of(p), [&](mf_sched *sched, int i0, int i1) {
        mf_bn_relu_grad_input(x.data_ptr<float>(), dy.data_ptr<float>(), scale.data_ptr<float>(),
                              shift.data_ptr<float>(), mean.data_ptr<float>(), a.data_ptr<float>(), b.data_ptr<float>(),
                              d.data_ptr<float>(), dx.data_ptr<float>(), p, I(x.size(1)), sched, i0, i1);
        return 0;
    });
}

// Max pooling within frames (kernel 1 x kh x kw) of channels-last x into channels-last y.
void max_pool(const at::Tensor &x, const at::Tensor &y, at::IntArrayRef kernel, at::IntArrayRef stride,
              at::IntArrayRef padding) {
    check_cl3d(x, "x");
    check_cl3d(y, "y");
    TORCH_CHECK(x.size(1) % 8 == 0, "mfnet::max_pool: channels a multiple of 8");
    const int64_t n = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
    const int64_t ho = y.size(3), wo = y.size(4);
    run_items(n * t * ho, [&](mf_sched *sched, int i0, int i1) {
        mf_max_pool(x.data_ptr<float>(), y.data_ptr<float>(), I(n), I(t), I(h), I(w), I(c), I(kernel[0]),
                    I(kernel[1]), I(stride[0]), I(stride[1]), I(padding[0]), I(padding[1]), I(ho), I(wo), sched, i0,
                    i1);
        return 0;
    });
}

// Which tiles the kernels use: AVX-512 (where the CPU has it) and the Winograd tile. Same numbers either way, up
// to rounding.
void set_tiles(bool avx512, bool winograd) {
    mf_set_avx512(avx512 ? 1 : 0);
    mf_set_winograd(winograd ? 1 : 0);
}

// How many threads of the pool take part in an operator's work of `items` items (every operator shares its
// items through run_items): what the tests check to know that the operators run in parallel at all.
int64_t pool_threads(int64_t items) {
    std::mutex lock;
    std::set<int> seen;
    run_items(items, [&](mf_sched *, int, int) {
        std::lock_guard<std::mutex> guard(lock);
        seen.insert(at::get_thread_num());
        return 0;
    });
    return static_cast<int64_t>(seen.size());
}

}  // namespace

TORCH_LIBRARY(mfnet, m) {
    m.def("pack(Tensor x, Tensor? scale, Tensor? shift, Tensor(a!) buf, int pd, int ph, int pw) -> ()");
    m.def(
        "mux_pack(Tensor x, Tensor scale, Tensor shift, Tensor w1, Tensor b1, Tensor w2, Tensor b2, Tensor out_scale, "
        "Tensor out_shift, Tensor(a!) buf, Tensor(b!) out, int[3] padding, int rows, Tensor? proj_scale, "
        "Tensor? proj_shift, Tensor(c!) proj, int[3] proj_stride) -> ()");
    m.def(
        "conv(Tensor buf, Tensor weight, Tensor bias, int[3] out_size, int temporal_stride, bool relu, "
        "Tensor(a!) out_buf, int[3] out_padding, Tensor(b!) out, Tensor? add, Tensor? wino) -> ()");
    m.def(
        "conv_dense(Tensor buf, Tensor weight, Tensor bias, int[3] out_size, int temporal_stride, Tensor dense_weight, "
        "Tensor dense_bias, Tensor(a!) out, Tensor? add, Tensor? extra, int extra_channels, int spatial_stride) -> ()");
    m.def(
        "tail(Tensor buf, Tensor w1, Tensor b1, Tensor w2, Tensor b2, int[3] out_size, int temporal_stride, "
        "Tensor(a!) out, Tensor shortcut, Tensor? wino1, Tensor? wino2) -> ()");
    m.def(
        "conv_wgrad(Tensor bx, Tensor bg, Tensor(a!) dw, Tensor(b!) scratch, int[3] out_size, int temporal_stride, "
        "int[3] offset) -> ()");
    m.def("bn_relu(Tensor x, Tensor scale, Tensor shift, Tensor(a!) y) -> ()");
    m.def("bn_stats(Tensor x, Tensor k, Tensor(a!) s1, Tensor(b!) s2) -> ()");
    m.def(
        "bn_relu_grad_sums(Tensor x, Tensor dy, Tensor scale, Tensor shift, Tensor mean, Tensor(a!) s1, "
        "Tensor(b!) s2) -> ()");
    m.def(
        "bn_relu_grad_input(Tensor x, Tensor dy, Tensor scale, Tensor shift, Tensor mean, Tensor a, Tensor b, "
        "Tensor d, Tensor(a!) dx) -> ()");
    m.def("max_pool(Tensor x, Tensor(a!) y, int[2] kernel, int[2] stride, int[2] padding) -> ()");
    m.def("set_tiles(bool avx512, bool winograd) -> ()", &set_tiles);
    m.def("pool_threads(int items) -> int", &pool_threads);
}

TORCH_LIBRARY_IMPL(mfnet, CPU, m) {
    m.impl("pack", &pack);
    m.impl("mux_pack", &mux_pack);
    m.impl("conv", &conv);
    m.impl("conv_dense", &conv_dense);
    m.impl("tail", &tail);
    m.impl("conv_wgrad", &conv_wgrad);
    m.impl("bn_relu", &bn_relu);
    m.impl("bn_stats", &bn_stats);
    m.impl("bn_relu_grad_sums", &bn_relu_grad_sums);
    m.impl("bn_relu_grad_input", &bn_relu_grad_input);
    m.impl("max_pool", &max_pool);
}
