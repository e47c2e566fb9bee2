//! Tests of the packed GEMM against a naive product, for every micro kernel this CPU runs.

use burn::tensor::bf16;

use super::*;
use crate::fused::cpu::isa::CpuIsa;

/// The operand types under test: made from small values (exact in bf16), read in f64.
trait Value: Packed {
    fn of(value: f32) -> Self;
    fn to_f64(self) -> f64;
    /// Every micro kernel this CPU runs for the type, the portable one last.
    fn kernels() -> Vec<MicroKernel<Self::Unit>>;
}

impl Value for bf16 {
    fn of(value: f32) -> Self {
        bf16::from_f32(value)
    }
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    fn kernels() -> Vec<MicroKernel<u32>> {
        bf16_kernels::available()
    }
}

impl Value for widened::WidenedBf16 {
    fn of(value: f32) -> Self {
        Self(bf16::from_f32(value))
    }
    fn to_f64(self) -> f64 {
        self.0.to_f64()
    }
    fn kernels() -> Vec<MicroKernel<f32>> {
        f32_kernels::available()
    }
}

impl Value for f32 {
    fn of(value: f32) -> Self {
        value
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn kernels() -> Vec<MicroKernel<f32>> {
        f32_kernels::available()
    }
}

/// The products of the test values are exact in f32 (multiples of 1/64 below 2), so the
/// only error is the f32 rounding of the sums: at most `k` roundings of `2^-24` of the sum
/// of `|a b|`.
fn bound(k: usize, magnitude: f64) -> f64 {
    (k as f64 + 2.0) * f64::from(f32::EPSILON) * magnitude
}

fn values<P: Value>(len: usize, seed: usize) -> Vec<P> {
    (0..len)
        .map(|i| P::of((((i * 7 + seed) % 23) as f32 - 11.0) / 8.0))
        .collect()
}

/// Every micro kernel this CPU runs for each operand type, every layout of A and B
/// (row-major, transposed), odd k, partial panels, every way of splitting the work (on
/// pools of 1, 2, 4 and 32 threads), beta 0 over NaNs, beta 1 and beta 0.5: the product and
/// its f64 reference agree within the f32 sums' rounding.
#[test]
fn every_layout_and_split_is_the_product() {
    // [m, k, n], with the split each takes in f32 (bf16 has half as many blocks of k):
    // one block; odd k and partial panels; by k; by columns on 2 and 4 threads, A kept
    // for two blocks of columns and three of k per task on 2; by columns on 2 threads, by
    // k on 4 and 32; by k into as many ranges as threads (up to 12); by rows on 2 threads
    // (the last task's 20 rows a partial panel), by columns on 4 and 32 (one range of k);
    // by rows on 2 and 4 threads, tasks from row 252 on, two blocks of rows per task on 2;
    // the same with A kept over two blocks of columns; k = 0. One thread: a single task
    // over every block.
    let shapes = [
        [1, 1, 1],
        [13, 7, 33],
        [30, 513, 70],
        [14, 521, 2000],
        [40, 600, 1000],
        [25, 3001, 40],
        [200, 40, 40],
        [1000, 30, 40],
        [1000, 30, 300],
        [3, 0, 5],
    ];
    let pools: Vec<_> = [1, 2, 4, 32]
        .into_iter()
        .map(|threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            (threads, pool)
        })
        .collect();
    for shape in shapes {
        check_product::<bf16>(shape, &pools);
        check_product::<widened::WidenedBf16>(shape, &pools);
        check_product::<f32>(shape, &pools);
    }
}

fn check_product<P: Value>([m, k, n]: [usize; 3], pools: &[(usize, rayon::ThreadPool)]) {
    let (a, b) = (values::<P>(m * k, 1), values::<P>(k * n, 5));
    // Row-major and stored-transposed copies, and every pairing of them.
    let a_t: Vec<P> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
    let b_t: Vec<P> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
    let mut expected = vec![0.0_f64; m * n];
    let mut magnitude = vec![0.0_f64; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                let product = a[i * k + p].to_f64() * b[p * n + j].to_f64();
                expected[i * n + j] += product;
                magnitude[i * n + j] += product.abs();
            }
        }
    }
    let a_views = [
        ("A", MatRef::row_major(&a, m, k)),
        ("A^T^T", MatRef::row_major(&a_t, k, m).t()),
    ];
    // B as columns 2.. of a wider matrix (the gradient filter's column ranges).
    let b_wide: Vec<P> = (0..k * (n + 4))
        .map(|i| match i % (n + 4) {
            j if (2..2 + n).contains(&j) => b[i / (n + 4) * n + j - 2],
            _ => P::of(7.0),
        })
        .collect();
    let b_views = [
        ("B", MatRef::row_major(&b, k, n)),
        ("B^T^T", MatRef::row_major(&b_t, n, k).t()),
        (
            "B[:, 2..]",
            MatRef::row_major(&b_wide, k, n + 4).columns(2..2 + n),
        ),
    ];
    for (threads, pool) in pools {
        for micro in P::kernels() {
            for (a_name, a_view) in a_views {
                for (b_name, b_view) in b_views {
                    let context =
                        format!("{micro:?} [{m}, {k}, {n}] {a_name} {b_name}, {threads} threads");
                    // C is columns 3..3 + n of a wider matrix (row stride n + 5), whose
                    // other columns hold a sentinel the GEMM must leave alone.
                    const SENTINEL: f32 = 12345.0;
                    let width = n + 5;
                    let mut wide: Vec<f32> = (0..m * width)
                        .map(|i| match i % width {
                            j if (3..3 + n).contains(&j) => f32::NAN,
                            _ => SENTINEL,
                        })
                        .collect();
                    // beta 0 over NaNs, then accumulating: C = AB, 2 AB, 0.5 (2 AB) + AB.
                    for (beta, factor, roundings) in
                        [(0.0, 1.0, k), (1.0, 2.0, k + 1), (0.5, 2.0, k + 2)]
                    {
                        let c_view = MatMut::row_major(&mut wide, m, width).columns(3..3 + n);
                        pool.install(|| gemm(micro, a_view, b_view, beta, c_view));
                        let outside = (0..m * width).filter(|i| !(3..3 + n).contains(&(i % width)));
                        assert!(
                            outside.clone().all(|i| wide[i] == SENTINEL),
                            "{context}, beta {beta}: a column outside C was written"
                        );
                        let c: Vec<f32> = (0..m * n)
                            .map(|i| wide[i / n * width + 3 + i % n])
                            .collect();
                        for ((c, e), s) in c.iter().zip(&expected).zip(&magnitude) {
                            let (e, s) = (factor * e, factor * s);
                            assert!(
                                (f64::from(*c) - e).abs() <= bound(roundings, s),
                                "{context}, beta {beta}: {c} vs {e}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Every micro kernel with fused multiply-adds gives, on whole tiles, the bits of the
/// plain sequence of fused multiply-adds from `C`'s value, `k` after `k` (over several
/// blocks of `k`, an odd count, beta 1, on values whose sums round): f32's AVX-512 and
/// AVX2 kernels; for bf16, the pairs widened in AVX-512 registers, and the operands widened
/// as they are packed on either f32 kernel. So the level a CPU runs changes no bit. (The
/// portable kernel rounds its products; `vdpbf16ps` its pairs.)
#[test]
fn fused_kernels_give_the_bits_of_sequential_fused_multiply_adds() {
    let fused = |name: String| name != "portable";
    let f32_kernels: Vec<_> = f32_kernels::available()
        .into_iter()
        .filter(|micro| fused(format!("{micro:?}")))
        .collect();
    let pair_kernels: Vec<_> = bf16_kernels::available()
        .into_iter()
        .filter(|micro| format!("{micro:?}") == "avx512 widened")
        .collect();
    let level = crate::fused::cpu::isa::level();
    assert_eq!(
        f32_kernels.len(),
        usize::from(level >= CpuIsa::Avx2) + usize::from(level >= CpuIsa::Avx512)
    );
    assert_eq!(pair_kernels.len(), usize::from(level >= CpuIsa::Avx512));
    let same = |actual: Vec<u32>, expected: Vec<u32>, context: String| {
        let differ = actual.iter().zip(&expected).filter(|(a, e)| a != e).count();
        assert_eq!(
            differ,
            0,
            "{context}: {differ} of {} elements differ",
            actual.len()
        );
    };
    for &micro in &f32_kernels {
        let (f32_bits, widened) = (
            product_bits::<f32>(micro),
            product_bits::<widened::WidenedBf16>(micro),
        );
        same(f32_bits, reference_bits::<f32>(), format!("{micro:?}"));
        same(
            widened,
            reference_bits::<bf16>(),
            format!("{micro:?} widened"),
        );
    }
    for micro in pair_kernels {
        let bits = product_bits::<bf16>(micro);
        same(bits, reference_bits::<bf16>(), format!("{micro:?}"));
    }
}

/// `[m, k, n]` of [`product_bits`]: whole tiles, blocks of `k` in either unit, `k` odd.
const BITS_SHAPE: [usize; 3] = [2 * MR, 1101, 2 * NR];

/// The operands of [`product_bits`] (rounded to `P`), and `C`'s starting value.
fn bits_operands<P: Value>() -> (Vec<P>, Vec<P>, Vec<f32>) {
    let [m, k, n] = BITS_SHAPE;
    let value = |i: usize, seed: usize| P::of(((i * 7919 + seed) % 1009) as f32 / 317.0 - 1.5);
    let a = (0..m * k).map(|i| value(i, 1)).collect();
    let b = (0..k * n).map(|i| value(i, 5)).collect();
    let c = (0..m * n).map(|i| i as f32 / 7.0).collect();
    (a, b, c)
}

/// The bits of `C + A B` on [`bits_operands`] with `micro`, on one thread (a split by
/// ranges of `k` adds partial sums).
fn product_bits<P: Value>(micro: MicroKernel<P::Unit>) -> Vec<u32> {
    let [m, k, n] = BITS_SHAPE;
    let (a, b, mut c) = bits_operands::<P>();
    let (a, b) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build();
    one_thread
        .unwrap()
        .install(|| gemm(micro, a, b, 1.0, MatMut::row_major(&mut c, m, n)));
    c.iter().map(|c| c.to_bits()).collect()
}

/// The bits of `C + A B` on [`bits_operands`] of `P` by f32 fused multiply-adds, `k` after
/// `k`.
fn reference_bits<P: Value>() -> Vec<u32> {
    let [m, k, n] = BITS_SHAPE;
    let (a, b, c) = bits_operands::<P>();
    let f32_of = |value: P| value.to_f64() as f32;
    let mut bits = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let sum = (0..k).fold(c[i * n + j], |sum, p| {
                f32_of(a[i * k + p]).mul_add(f32_of(b[p * n + j]), sum)
            });
            bits.push(sum.to_bits());
        }
    }
    bits
}

/// A view with neither stride 1 (a column of a wider matrix, read down): the general
/// packing path of each operand type.
#[test]
fn strided_views_are_packed_element_by_element() {
    check_strided::<bf16>();
    check_strided::<widened::WidenedBf16>();
    check_strided::<f32>();
}

fn check_strided<P: Value>() {
    let [m, k, n] = [5, 9, 6];
    // A's element (i, p) at 2 (i * k + p): every other element of a longer slice.
    let wide: Vec<P> = values(2 * m * k, 3);
    let a = MatRef {
        data: &wide,
        rows: m,
        cols: k,
        row_stride: 2 * k,
        col_stride: 2,
    };
    let b = values::<P>(k * n, 4);
    let mut c = vec![0.0_f32; m * n];
    for micro in P::kernels() {
        gemm(
            micro,
            a,
            MatRef::row_major(&b, k, n),
            0.0,
            MatMut::row_major(&mut c, m, n),
        );
        for i in 0..m {
            for j in 0..n {
                let e: f64 = (0..k)
                    .map(|p| wide[2 * (i * k + p)].to_f64() * b[p * n + j].to_f64())
                    .sum();
                assert!(
                    (f64::from(c[i * n + j]) - e).abs() < 1e-5,
                    "{micro:?} ({i}, {j})"
                );
            }
        }
    }
}
