//! CPU kernels for inference where burn's flex backend is slow (../shared/docs/deps.md:
//! its softmax, GELU and attention run at a third of the matmul speed): exact softmax
//! attention over query blocks with GEMMs from the `gemm` crate and a vectorised exp, and
//! GELU with a vectorised erf. Used only on the flex device without autodiff; training
//! keeps burn's differentiable ops.

use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Switch the kernels off (or on again) for the whole process: the CPU backend then runs the
/// same generic burn ops as a GPU does (`gpu-check` compares the two paths).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// exp(x) for x <= 0 (softmax after subtracting the row max): n = round(x / ln 2) and
/// r = x - n ln 2 in two parts (Cody-Waite), e^r by its degree-7 Taylor polynomial on
/// [-ln2/2, ln2/2], times 2^n through the exponent bits; relative error about 1e-7. Straight-line
/// f32 code, so loops over it vectorise.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_751_953_125;
    const LN2_LO: f32 = 1.428_606_765_330_187e-6;
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    f32::from_bits(((n as i32 + 127) << 23) as u32) * p
}

/// erf(x) by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7, about 3e-7 in f32).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let e = 1.0 - poly * exp_neg(-a * a);
    if x < 0.0 { -e } else { e }
}

#[inline(always)]
fn gelu_slice_impl(v: &mut [f32]) {
    for x in v.iter_mut() {
        *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

const LANES: usize = 16;

/// Row softmax; the max and the sum keep 16 independent lanes so that they vectorise (a
/// single float accumulator would force sequential adds).
#[inline(always)]
fn softmax_rows_impl(s: &mut [f32], cols: usize) {
    for row in s.chunks_exact_mut(cols) {
        let mut m = [f32::NEG_INFINITY; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                m[i] = if c[i] > m[i] { c[i] } else { m[i] };
            }
        }
        let mut max = m.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
        for &x in chunks.remainder() {
            max = if x > max { x } else { max };
        }
        for x in row.iter_mut() {
            *x = exp_neg(*x - max);
        }
        let mut acc = [0.0f32; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                acc[i] += c[i];
            }
        }
        let sum = acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_avx512(v: &mut [f32]) {
    gelu_slice_impl(v)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(v: &mut [f32]) {
    gelu_slice_impl(v)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_avx512(s: &mut [f32], cols: usize) {
    softmax_rows_impl(s, cols)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(s: &mut [f32], cols: usize) {
    softmax_rows_impl(s, cols)
}

/// In-place exact GELU (erf form, as torch's default), vectorised for the running CPU.
pub fn gelu_in_place(v: &mut [f32]) {
    v.par_chunks_mut(1 << 14).for_each(|c| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                return unsafe { gelu_avx512(c) };
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return unsafe { gelu_avx2(c) };
            }
        }
        gelu_slice_impl(c)
    });
}

fn softmax_rows(s: &mut [f32], cols: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return unsafe { softmax_avx512(s, cols) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return unsafe { softmax_avx2(s, cols) };
        }
    }
    softmax_rows_impl(s, cols)
}

const QUERY_BLOCK: usize = 128;

/// Multi-head softmax(scale q k^T) v in the projections' own layout: q [b, tq, h*dh],
/// k and v [b, tk, h*dh] (row-major, heads side by side); returns [b, tq, h*dh]. Non-causal,
/// no mask. Each task takes a block of queries of one head, so the scores [block, tk] stay in
/// cache and rows are complete (no online softmax); heads are read in place by strides.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    b: usize,
    heads: usize,
    tq: usize,
    tk: usize,
    dh: usize,
    scale: f32,
) -> Vec<f32> {
    let d = heads * dh;
    let mut out = vec![0.0f32; b * tq * d];
    let blocks = tq.div_ceil(QUERY_BLOCK);
    let tasks: Vec<(usize, usize, usize)> =
        (0..b).flat_map(|i| (0..heads).flat_map(move |h| (0..blocks).map(move |bl| (i, h, bl)))).collect();
    let out_ptr = out.as_mut_ptr() as usize;
    tasks.par_iter().for_each_init(
        || vec![0.0f32; QUERY_BLOCK * tk],
        |scores, &(i, h, bl)| {
            let r0 = bl * QUERY_BLOCK;
            let rows = QUERY_BLOCK.min(tq - r0);
            let qh = &q[(i * tq + r0) * d + h * dh..];
            let kh = &k[i * tk * d + h * dh..];
            let vh = &v[i * tk * d + h * dh..];
            let s = &mut scores[..rows * tk];
            // SAFETY: with the strides given, the reads stay inside q, k and v and the writes
            // inside `scores` and this task's [rows x dh] block of `out` (disjoint per task).
            unsafe {
                gemm::gemm(
                    rows,
                    tk,
                    dh,
                    s.as_mut_ptr(),
                    1,
                    tk as isize,
                    false,
                    qh.as_ptr(),
                    1,
                    d as isize,
                    kh.as_ptr(),
                    d as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            softmax_rows(s, tk);
            let dst = (out_ptr as *mut f32).wrapping_add((i * tq + r0) * d + h * dh);
            unsafe {
                gemm::gemm(
                    rows,
                    dh,
                    tk,
                    dst,
                    1,
                    d as isize,
                    false,
                    s.as_ptr(),
                    1,
                    tk as isize,
                    vh.as_ptr(),
                    1,
                    d as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_are_accurate() {
        for i in 0..2000 {
            let x = -(i as f32) * 0.04;
            let (a, b) = (exp_neg(x), (x as f64).exp());
            assert!(((a as f64 - b) / b.max(1e-30)).abs() < 3e-7 || b < 1e-37, "exp({x}) = {a} vs {b}");
        }
        // erf against the series / known values.
        for (x, want) in [
            (0.0f32, 0.0f64),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (-2.0, -0.995_322_265_018_952_7),
        ] {
            assert!((erf(x) as f64 - want).abs() < 4e-7, "erf({x}) = {} vs {want}", erf(x));
        }
        let mut v = vec![-3.0f32, -1.0, 0.0, 0.5, 2.0];
        gelu_in_place(&mut v);
        let want = [-0.004_049_729_6, -0.158_655_25, 0.0, 0.345_731_13, 1.954_499_7];
        for (g, w) in v.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{v:?}");
        }
    }

    #[test]
    fn attention_matches_the_naive_formula() {
        let (b, heads, tq, tk, dh) = (1, 3, 200, 150, 8);
        let bh = b * heads;
        let make = |n: usize, s: u32| {
            (0..n)
                .map(|i| (((i as u32).wrapping_mul(2654435761) ^ s) % 1000) as f32 / 500.0 - 1.0)
                .collect::<Vec<f32>>()
        };
        let (q, k, v) = (make(bh * tq * dh, 1), make(bh * tk * dh, 2), make(bh * tk * dh, 3));
        let scale = 1.0 / (dh as f32).sqrt();
        // Test data laid out per head ([h, t, dh]); the kernel takes [t, h*dh].
        let interleave = |x: &[f32], t: usize| -> Vec<f32> {
            let mut o = vec![0.0; x.len()];
            for h in 0..heads {
                for i in 0..t {
                    for c in 0..dh {
                        o[i * heads * dh + h * dh + c] = x[(h * t + i) * dh + c];
                    }
                }
            }
            o
        };
        let out = attention(&interleave(&q, tq), &interleave(&k, tk), &interleave(&v, tk), b, heads, tq, tk, dh, scale);
        let got: Vec<f32> = (0..bh * tq * dh)
            .map(|n| {
                let (h, rest) = (n / (tq * dh), n % (tq * dh));
                let (i, c) = (rest / dh, rest % dh);
                out[i * heads * dh + h * dh + c]
            })
            .collect();
        let mut worst = 0.0f64;
        for h in 0..bh {
            for i in 0..tq {
                let s: Vec<f64> = (0..tk)
                    .map(|j| {
                        (0..dh).map(|c| q[(h * tq + i) * dh + c] as f64 * k[(h * tk + j) * dh + c] as f64).sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for c in 0..dh {
                    let o: f64 = (0..tk).map(|j| (s[j] - m).exp() / z * v[(h * tk + j) * dh + c] as f64).sum();
                    worst = worst.max((o - got[(h * tq + i) * dh + c] as f64).abs());
                }
            }
        }
        assert!(worst < 1e-5, "max |diff| {worst}");
    }
}
