// Elementwise ops with NumPy broadcasting: add, sub, mul, div, scalar arithmetic and the
// pointwise math functions. Operands must share dtype and device (no silent promotion).
#pragma once
#include "runtime/tensor.h"

namespace sd {

Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);

Tensor add_scalar(const Tensor& x, double s);   // x + s
Tensor mul_scalar(const Tensor& x, double s);   // x * s
Tensor pow_scalar(const Tensor& x, double p);   // x ** p
Tensor rsub_scalar(const Tensor& x, double s);  // s - x
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor square(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor clamp(const Tensor& x, double lo, double hi);  // gradient 0 outside [lo, hi]

// In place, no autograd (optimizer and bookkeeping code): x += alpha * y, x *= s.
void add_(const Tensor& x, const Tensor& y, double alpha = 1.0);
void mul_scalar_(const Tensor& x, double s);

inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator-(const Tensor& x) { return neg(x); }
inline Tensor operator+(const Tensor& x, double s) { return add_scalar(x, s); }
inline Tensor operator-(const Tensor& x, double s) { return add_scalar(x, -s); }
inline Tensor operator*(const Tensor& x, double s) { return mul_scalar(x, s); }
inline Tensor operator/(const Tensor& x, double s) { return mul_scalar(x, 1.0 / s); }
inline Tensor operator*(double s, const Tensor& x) { return mul_scalar(x, s); }
inline Tensor operator+(double s, const Tensor& x) { return add_scalar(x, s); }
inline Tensor operator-(double s, const Tensor& x) { return rsub_scalar(x, s); }

}  // namespace sd
