// upfirdn2d CUDA kernel: zero-insertion upsampling, pad/crop, true 2-D convolution with a
// [kh, kw] FIR kernel shared by all channels, downsampling (StyleGAN2's op; see ops/upfirdn2d.py).
//
// One thread per output sample, on a 3-D grid: x over output columns, y over output rows, z over
// the N*C planes (looping when there are more than 65535). Output o (per axis) sees the padded,
// zero-inserted signal at s = o * down - pad0 + q for taps q = 0..k-1, with weight k[k - 1 - q]
// (the kernel is flipped: a true convolution). Only taps where s is a multiple of `up` hit a real
// input sample x[s / up], so the loops start at the first such tap and step by `up`: k/up taps
// per axis.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace {

__device__ __forceinline__ int positive_mod(int a, int m) {
  const int r = a % m;
  return r < 0 ? r + m : r;
}

template <typename scalar_t, typename acc_t>
__global__ void upfirdn2d_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ k,
                                 scalar_t* __restrict__ out, int64_t planes, int in_h, int in_w,
                                 int out_h, int out_w, int kh, int kw, int ux, int uy, int dx,
                                 int dy, int x0, int y0) {
  const int ox = blockIdx.x * blockDim.x + threadIdx.x;
  const int oy = blockIdx.y * blockDim.y + threadIdx.y;
  if (ox >= out_w || oy >= out_h) return;
  const int sy = oy * dy - y0;  // zero-inserted row index read by tap qy = 0
  const int sx = ox * dx - x0;
  const int qy_first = positive_mod(-sy, uy);
  const int qx_first = positive_mod(-sx, ux);

  for (int64_t plane = blockIdx.z; plane < planes; plane += gridDim.z) {  // plane = n * C + c
    const scalar_t* xp = x + plane * in_h * in_w;
    acc_t acc = acc_t(0);
    for (int qy = qy_first; qy < kh; qy += uy) {
      const int iy = (sy + qy) / uy;  // exact: sy + qy is a multiple of uy
      if (iy < 0) continue;
      if (iy >= in_h) break;
      const acc_t* krow = k + static_cast<int64_t>(kh - 1 - qy) * kw;
      const scalar_t* xrow = xp + static_cast<int64_t>(iy) * in_w;
      for (int qx = qx_first; qx < kw; qx += ux) {
        const int ix = (sx + qx) / ux;
        if (ix < 0) continue;
        if (ix >= in_w) break;
        acc += static_cast<acc_t>(xrow[ix]) * krow[kw - 1 - qx];
      }
    }
    out[(plane * out_h + oy) * out_w + ox] = static_cast<scalar_t>(acc);
  }
}

}  // namespace

at::Tensor upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& kernel, int64_t ux, int64_t uy,
                          int64_t dx, int64_t dy, int64_t x0, int64_t x1, int64_t y0, int64_t y1) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(0), c = x.size(1), in_h = x.size(2), in_w = x.size(3);
  const int64_t kh = kernel.size(0), kw = kernel.size(1);
  const int64_t out_h = (in_h * uy + y0 + y1 - kh + dy) / dy;
  const int64_t out_w = (in_w * ux + x0 + x1 - kw + dx) / dx;
  TORCH_CHECK(out_h >= 1 && out_w >= 1, "upfirdn2d: the pads leave no output");
  TORCH_CHECK((out_h + 7) / 8 <= 65535, "upfirdn2d: output height too large for the grid");
  auto out = at::empty({n, c, out_h, out_w}, x.options());
  if (out.numel() == 0) return out;

  const dim3 threads(32, 8);
  const dim3 blocks(static_cast<unsigned>((out_w + 31) / 32), static_cast<unsigned>((out_h + 7) / 8),
                    static_cast<unsigned>(std::min<int64_t>(n * c, 65535)));
  auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(),
                                  "upfirdn2d_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const at::Tensor k = kernel.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    upfirdn2d_kernel<scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
        x.data_ptr<scalar_t>(), k.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), n * c,
        static_cast<int>(in_h), static_cast<int>(in_w), static_cast<int>(out_h),
        static_cast<int>(out_w), static_cast<int>(kh), static_cast<int>(kw),
        static_cast<int>(ux), static_cast<int>(uy), static_cast<int>(dx), static_cast<int>(dy),
        static_cast<int>(x0), static_cast<int>(y0));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}
