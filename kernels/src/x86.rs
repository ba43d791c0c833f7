//! The x86-64 kernels, with explicit intrinsics: LLVM's auto-vectorization of the portable loop
//! is fragile (it scalarized the fused sums), and this loop is the whole point of the crate.
//! Each computes exactly what `Lanes::run` computes, 8 (AVX-512) or 4 (AVX2) elements at a time.

use std::arch::x86_64::*;

use crate::{Lanes, Spans, Sums, Tol};

#[target_feature(enable = "avx512f,avx512dq,avx512vl,fma")]
pub(crate) fn sums_avx512(a: &[f32], e: &[f32], spans: Spans, tol: Tol) -> Sums {
    let z = _mm512_setzero_pd();
    let (atol, rtol, floor, one) =
        (_mm512_set1_pd(tol.atol), _mm512_set1_pd(tol.rtol), _mm512_set1_pd(tol.rel_floor), _mm512_set1_pd(1.0));
    let (mut max_abs, mut sum_abs, mut max_rel, mut mismatches) = (_mm512_set1_pd(-1.0), z, z, z);
    let (mut dot, mut aa, mut ee, mut dd) = (z, z, z, z);
    let mut tail = Lanes::<1>::new();
    let mut n = 0;
    for &(start, end) in spans {
        let (a, e) = (&a[start..end], &e[start..end]);
        let body = a.len() / 8 * 8;
        for (ca, ce) in a[..body].chunks_exact(8).zip(e[..body].chunks_exact(8)) {
            // SAFETY: each chunk holds 8 f32, what an unaligned 256-bit load reads.
            let x = _mm512_cvtps_pd(unsafe { _mm256_loadu_ps(ca.as_ptr()) });
            let y = _mm512_cvtps_pd(unsafe { _mm256_loadu_ps(ce.as_ptr()) });
            let d = _mm512_sub_pd(x, y);
            let ad = _mm512_abs_pd(d);
            let ae = _mm512_abs_pd(y);
            max_abs = _mm512_max_pd(max_abs, ad);
            sum_abs = _mm512_add_pd(sum_abs, ad);
            max_rel = _mm512_max_pd(max_rel, _mm512_div_pd(ad, _mm512_max_pd(ae, floor)));
            dot = _mm512_fmadd_pd(x, y, dot);
            aa = _mm512_fmadd_pd(x, x, aa);
            ee = _mm512_fmadd_pd(y, y, ee);
            dd = _mm512_fmadd_pd(d, d, dd);
            // Not fused: the same rounding as the scalar path, so both decide alike.
            let limit = _mm512_add_pd(atol, _mm512_mul_pd(rtol, ae));
            let over = _mm512_cmp_pd_mask::<_CMP_GT_OQ>(ad, limit);
            mismatches = _mm512_mask_add_pd(mismatches, over, mismatches, one);
        }
        tail.run::<false>(&a[body..], &e[body..], tol);
        n += end - start;
    }
    let mut s = Sums {
        n,
        max_abs: _mm512_reduce_max_pd(max_abs),
        sum_abs: _mm512_reduce_add_pd(sum_abs),
        max_rel: _mm512_reduce_max_pd(max_rel),
        dot: _mm512_reduce_add_pd(dot),
        aa: _mm512_reduce_add_pd(aa),
        ee: _mm512_reduce_add_pd(ee),
        dd: _mm512_reduce_add_pd(dd),
        mismatches: _mm512_reduce_add_pd(mismatches) as usize,
    };
    tail.add_to(&mut s);
    s
}

#[target_feature(enable = "avx2,fma")]
pub(crate) fn sums_avx2(a: &[f32], e: &[f32], spans: Spans, tol: Tol) -> Sums {
    let z = _mm256_setzero_pd();
    let (atol, rtol, floor, one) =
        (_mm256_set1_pd(tol.atol), _mm256_set1_pd(tol.rtol), _mm256_set1_pd(tol.rel_floor), _mm256_set1_pd(1.0));
    let sign = _mm256_set1_pd(-0.0);
    let (mut max_abs, mut sum_abs, mut max_rel, mut mismatches) = (_mm256_set1_pd(-1.0), z, z, z);
    let (mut dot, mut aa, mut ee, mut dd) = (z, z, z, z);
    let mut tail = Lanes::<1>::new();
    let mut n = 0;
    for &(start, end) in spans {
        let (a, e) = (&a[start..end], &e[start..end]);
        let body = a.len() / 4 * 4;
        for (ca, ce) in a[..body].chunks_exact(4).zip(e[..body].chunks_exact(4)) {
            // SAFETY: each chunk holds 4 f32, what an unaligned 128-bit load reads.
            let x = _mm256_cvtps_pd(unsafe { _mm_loadu_ps(ca.as_ptr()) });
            let y = _mm256_cvtps_pd(unsafe { _mm_loadu_ps(ce.as_ptr()) });
            let d = _mm256_sub_pd(x, y);
            let ad = _mm256_andnot_pd(sign, d);
            let ae = _mm256_andnot_pd(sign, y);
            max_abs = _mm256_max_pd(max_abs, ad);
            sum_abs = _mm256_add_pd(sum_abs, ad);
            max_rel = _mm256_max_pd(max_rel, _mm256_div_pd(ad, _mm256_max_pd(ae, floor)));
            dot = _mm256_fmadd_pd(x, y, dot);
            aa = _mm256_fmadd_pd(x, x, aa);
            ee = _mm256_fmadd_pd(y, y, ee);
            dd = _mm256_fmadd_pd(d, d, dd);
            let limit = _mm256_add_pd(atol, _mm256_mul_pd(rtol, ae));
            let over = _mm256_cmp_pd::<_CMP_GT_OQ>(ad, limit);
            mismatches = _mm256_add_pd(mismatches, _mm256_and_pd(over, one));
        }
        tail.run::<false>(&a[body..], &e[body..], tol);
        n += end - start;
    }
    let lanes = |v: __m256d| {
        let mut out = [0.0; 4];
        // SAFETY: `out` holds 4 f64.
        unsafe { _mm256_storeu_pd(out.as_mut_ptr(), v) };
        out
    };
    let sum = |v| lanes(v).iter().sum::<f64>();
    let max = |v| lanes(v).iter().fold(f64::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    let mut s = Sums {
        n,
        max_abs: max(max_abs),
        sum_abs: sum(sum_abs),
        max_rel: max(max_rel),
        dot: sum(dot),
        aa: sum(aa),
        ee: sum(ee),
        dd: sum(dd),
        mismatches: sum(mismatches) as usize,
    };
    tail.add_to(&mut s);
    s
}
