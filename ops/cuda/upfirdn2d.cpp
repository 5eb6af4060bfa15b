// Python binding for the upfirdn2d CUDA kernel (upfirdn2d.cu); argument checks live here.
#include <torch/extension.h>

at::Tensor upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& kernel, int64_t ux, int64_t uy,
                          int64_t dx, int64_t dy, int64_t x0, int64_t x1, int64_t y0, int64_t y1);

static at::Tensor upfirdn2d(const at::Tensor& x, const at::Tensor& kernel, int64_t ux, int64_t uy,
                            int64_t dx, int64_t dy, int64_t x0, int64_t x1, int64_t y0,
                            int64_t y1) {
  TORCH_CHECK(x.is_cuda() && kernel.device() == x.device(),
              "upfirdn2d: x and kernel must be on the same CUDA device");
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(), "upfirdn2d: x must be a contiguous [N, C, H, W]");
  TORCH_CHECK(kernel.dim() == 2, "upfirdn2d: kernel must be [kh, kw]");
  TORCH_CHECK(x.is_floating_point() && kernel.is_floating_point(),
              "upfirdn2d: x and kernel must be floating point");
  TORCH_CHECK(ux >= 1 && uy >= 1 && dx >= 1 && dy >= 1, "upfirdn2d: factors must be >= 1");
  const int64_t limit = int64_t(1) << 30;  // the kernel indexes rows and columns with int
  TORCH_CHECK(x.size(2) * uy + std::abs(y0) + std::abs(y1) < limit &&
                  x.size(3) * ux + std::abs(x0) + std::abs(x1) < limit &&
                  kernel.size(0) < limit && kernel.size(1) < limit,
              "upfirdn2d: spatial size too large for the kernel");
  return upfirdn2d_cuda(x, kernel, ux, uy, dx, dy, x0, x1, y0, y1);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("upfirdn2d", &upfirdn2d,
        "upfirdn2d(x, kernel, ux, uy, dx, dy, x0, x1, y0, y1): upsample, pad, FIR, downsample");
}
