// The pointwise functions shared by the CPU and CUDA kernels, with their derivatives.
// One table keeps forward and backward formulas side by side for both backends.
#pragma once
#include <cmath>

#if defined(__CUDACC__)
#define SD_PW_HD __host__ __device__ __forceinline__
#else
#define SD_PW_HD inline
#endif

namespace sd {

enum class BinaryKind : int { Add, Sub, Mul, Div };

enum class UnaryKind : int {
  Neg, Exp, Log, Sqrt, Rsqrt, Square, Abs,
  AddScalar, MulScalar, RsubScalar, PowScalar, Clamp,
  Sigmoid, Tanh, Silu, GeluErf, GeluTanh, QuickGelu, Relu,
};

// p0/p1: the scalar parameters (the scalar of *Scalar ops, clamp bounds).
template <class A>
SD_PW_HD A binary_apply(BinaryKind k, A a, A b) {
  switch (k) {
    case BinaryKind::Add: return a + b;
    case BinaryKind::Sub: return a - b;
    case BinaryKind::Mul: return a * b;
    case BinaryKind::Div: return a / b;
  }
  return A(0);
}

template <class A>
SD_PW_HD A sigmoid_of(A x) { return A(1) / (A(1) + exp(-x)); }

template <class A>
SD_PW_HD A unary_apply(UnaryKind k, A x, A p0, A p1) {
  using std::abs; using std::erf; using std::exp; using std::log; using std::pow; using std::sqrt; using std::tanh;
  constexpr A kSqrt2Inv = A(0.70710678118654752440);
  constexpr A kSqrt2OverPi = A(0.79788456080286535588);
  switch (k) {
    case UnaryKind::Neg: return -x;
    case UnaryKind::Exp: return exp(x);
    case UnaryKind::Log: return log(x);
    case UnaryKind::Sqrt: return sqrt(x);
    case UnaryKind::Rsqrt: return A(1) / sqrt(x);
    case UnaryKind::Square: return x * x;
    case UnaryKind::Abs: return abs(x);
    case UnaryKind::AddScalar: return x + p0;
    case UnaryKind::MulScalar: return x * p0;
    case UnaryKind::RsubScalar: return p0 - x;
    case UnaryKind::PowScalar: return pow(x, p0);
    case UnaryKind::Clamp: return x < p0 ? p0 : (x > p1 ? p1 : x);
    case UnaryKind::Sigmoid: return sigmoid_of(x);
    case UnaryKind::Tanh: return tanh(x);
    case UnaryKind::Silu: return x * sigmoid_of(x);
    case UnaryKind::GeluErf: return A(0.5) * x * (A(1) + erf(x * kSqrt2Inv));
    case UnaryKind::GeluTanh: return A(0.5) * x * (A(1) + tanh(kSqrt2OverPi * (x + A(0.044715) * x * x * x)));
    case UnaryKind::QuickGelu: return x * sigmoid_of(A(1.702) * x);
    case UnaryKind::Relu: return x > A(0) ? x : A(0);
  }
  return A(0);
}

// d f(x) / dx.
template <class A>
SD_PW_HD A unary_derivative(UnaryKind k, A x, A p0, A p1) {
  using std::abs; using std::exp; using std::pow; using std::sqrt; using std::tanh;
  constexpr A kSqrt2Inv = A(0.70710678118654752440);
  constexpr A kInvSqrt2Pi = A(0.39894228040143267794);  // 1/sqrt(2 pi)
  constexpr A kSqrt2OverPi = A(0.79788456080286535588);
  switch (k) {
    case UnaryKind::Neg: return A(-1);
    case UnaryKind::Exp: return exp(x);
    case UnaryKind::Log: return A(1) / x;
    case UnaryKind::Sqrt: return A(0.5) / sqrt(x);
    case UnaryKind::Rsqrt: return A(-0.5) / (x * sqrt(x));
    case UnaryKind::Square: return A(2) * x;
    case UnaryKind::Abs: return x > A(0) ? A(1) : (x < A(0) ? A(-1) : A(0));
    case UnaryKind::AddScalar: return A(1);
    case UnaryKind::MulScalar: return p0;
    case UnaryKind::RsubScalar: return A(-1);
    case UnaryKind::PowScalar: return p0 * pow(x, p0 - A(1));
    case UnaryKind::Clamp: return (x < p0 || x > p1) ? A(0) : A(1);
    case UnaryKind::Sigmoid: { A s = sigmoid_of(x); return s * (A(1) - s); }
    case UnaryKind::Tanh: { A t = tanh(x); return A(1) - t * t; }
    case UnaryKind::Silu: { A s = sigmoid_of(x); return s * (A(1) + x * (A(1) - s)); }
    case UnaryKind::GeluErf: {
      using std::erf;
      return A(0.5) * (A(1) + erf(x * kSqrt2Inv)) + x * kInvSqrt2Pi * exp(A(-0.5) * x * x);
    }
    case UnaryKind::GeluTanh: {
      A inner = kSqrt2OverPi * (x + A(0.044715) * x * x * x);
      A t = tanh(inner);
      A dinner = kSqrt2OverPi * (A(1) + A(3) * A(0.044715) * x * x);
      return A(0.5) * (A(1) + t) + A(0.5) * x * (A(1) - t * t) * dinner;
    }
    case UnaryKind::QuickGelu: { A s = sigmoid_of(A(1.702) * x); return s + A(1.702) * x * s * (A(1) - s); }
    case UnaryKind::Relu: return x > A(0) ? A(1) : A(0);
  }
  return A(0);
}

const char* unary_name(UnaryKind k);
const char* binary_name(BinaryKind k);

}  // namespace sd
