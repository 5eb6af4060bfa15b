// Python binding for the fused bias + leaky ReLU kernel (bias_act.cu); argument checks live here.
#include <torch/extension.h>

at::Tensor bias_act_cuda(const at::Tensor& x, const at::Tensor& b, const at::Tensor& ref,
                         double slope, double scale);

static at::Tensor bias_act(const at::Tensor& x, const at::Tensor& b, const at::Tensor& ref,
                           double slope, double scale) {
  TORCH_CHECK(x.is_cuda() && x.is_contiguous() && x.dim() >= 2,
              "bias_act: x must be a contiguous CUDA tensor [N, C, ...]");
  TORCH_CHECK(x.is_floating_point(), "bias_act: x must be floating point");
  TORCH_CHECK(b.numel() == 0 || (b.dim() == 1 && b.size(0) == x.size(1) && b.is_contiguous() &&
                                 b.scalar_type() == x.scalar_type() && b.device() == x.device()),
              "bias_act: b must be empty or a contiguous [C] tensor of x's dtype and device");
  TORCH_CHECK(ref.numel() == 0 || (ref.sizes() == x.sizes() && ref.is_contiguous() &&
                                   ref.scalar_type() == x.scalar_type() &&
                                   ref.device() == x.device()),
              "bias_act: ref must be empty or a contiguous tensor shaped like x");
  TORCH_CHECK(slope >= 0 && scale > 0, "bias_act: needs slope >= 0 and scale > 0");
  return bias_act_cuda(x, b, ref, slope, scale);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bias_act", &bias_act,
        "bias_act(x, b, ref, slope, scale): (x + b) * (scale if (ref or x + b) > 0 else slope*scale)");
}
