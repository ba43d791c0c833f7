//! The hot loops of the harness's metrics (`harness::metrics::compare`), in their own crate so
//! they are compiled optimized even in debug builds (`[profile.dev.package.harness-kernels]` in
//! the workspace manifest): the harness itself stays debuggable, and `cargo test` still compares
//! gigabyte taps at memory speed. Every public function is non-generic, so it is instantiated
//! here, with this crate's optimization level.
//!
//! [`chunk_sums`] gives the sums of a chunk of finite elements: with AVX-512 or AVX2 intrinsics
//! (`x86.rs`, picked at run time, so a default x86-64 build still runs at memory speed), else a
//! portable loop over small lane arrays that LLVM vectorizes. Per element it only does
//! branch-free work that every element needs (f64 arithmetic, maxima, a mismatch count); the two indices the metrics report (first mismatch,
//! first maximum) are found afterwards by [`first_mismatch`] and [`first_equal`], and only for
//! the chunks that can hold them. Non-finite inputs are not handled here: they make `aa` or `ee`
//! non-finite ([`Sums::finite`]), and the caller then redoes the chunk with its exact scalar path.

/// allclose parameters: an element is a mismatch when `|a - e| > atol + rtol * |e|`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tol {
    pub atol: f64,
    pub rtol: f64,
    /// `max_rel` divides by `max(|e|, rel_floor)`.
    pub rel_floor: f64,
}

/// Contiguous runs of included elements, as `(start, end)` flat indices.
pub type Spans<'a> = &'a [(usize, usize)];

/// Sums over the finite elements of one chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sums {
    pub n: usize,
    pub max_abs: f64,
    pub sum_abs: f64,
    pub max_rel: f64,
    pub dot: f64,
    pub aa: f64,
    pub ee: f64,
    pub dd: f64,
    pub mismatches: usize,
}

impl Sums {
    /// False when some input was NaN or ±Inf (the sums of squares cannot overflow f64).
    pub fn finite(&self) -> bool {
        self.aa.is_finite() && self.ee.is_finite()
    }
}

#[derive(Clone, Copy)]
struct V<const L: usize>([f64; L]);

// Plain loops over lanes, not iterator adaptors or `array::from_fn`: LLVM turns these into one
// vector instruction each more reliably.
#[allow(clippy::needless_range_loop)]
impl<const L: usize> V<L> {
    #[inline(always)]
    fn splat(x: f64) -> Self {
        V([x; L])
    }
    #[inline(always)]
    fn load(x: &[f32]) -> Self {
        let mut r = [0.0; L];
        for l in 0..L {
            r[l] = x[l] as f64;
        }
        V(r)
    }
    #[inline(always)]
    fn map(self, o: Self, f: impl Fn(f64, f64) -> f64) -> Self {
        let mut r = [0.0; L];
        for l in 0..L {
            r[l] = f(self.0[l], o.0[l]);
        }
        V(r)
    }
    /// `self + a * b`, fused when the target has FMA (a plain call to `mul_add` without it
    /// would go through libm).
    #[inline(always)]
    fn acc<const FMA: bool>(self, a: Self, b: Self) -> Self {
        let mut r = [0.0; L];
        for l in 0..L {
            r[l] = if FMA { a.0[l].mul_add(b.0[l], self.0[l]) } else { self.0[l] + a.0[l] * b.0[l] };
        }
        V(r)
    }
    #[inline(always)]
    fn sum(self) -> f64 {
        self.0.iter().sum()
    }
    #[inline(always)]
    fn hmax(self) -> f64 {
        self.0.iter().fold(f64::NEG_INFINITY, |m, &x| if x > m { x } else { m })
    }
}

/// `a > b ? a : b`, which maps to one `maxpd` (unlike `f64::max`, which handles NaN).
#[inline(always)]
fn max(a: f64, b: f64) -> f64 {
    if a > b { a } else { b }
}

#[derive(Clone, Copy)]
struct Lanes<const L: usize> {
    max_abs: V<L>,
    sum_abs: V<L>,
    max_rel: V<L>,
    dot: V<L>,
    aa: V<L>,
    ee: V<L>,
    dd: V<L>,
    mismatches: V<L>,
}

impl<const L: usize> Lanes<L> {
    fn new() -> Self {
        let z = V::splat(0.0);
        Lanes { max_abs: V::splat(-1.0), sum_abs: z, max_rel: z, dot: z, aa: z, ee: z, dd: z, mismatches: z }
    }

    /// Accumulate `a` against `e`, whose lengths are equal multiples of `L`.
    #[inline(always)]
    fn run<const FMA: bool>(&mut self, a: &[f32], e: &[f32], tol: Tol) {
        // Locals, so the state lives in registers for the whole loop.
        let Lanes { mut max_abs, mut sum_abs, mut max_rel, mut dot, mut aa, mut ee, mut dd, mut mismatches } = *self;
        let (atol, rtol, floor) = (V::splat(tol.atol), V::splat(tol.rtol), V::splat(tol.rel_floor));
        for (ca, ce) in a.chunks_exact(L).zip(e.chunks_exact(L)) {
            let x = V::<L>::load(ca);
            let y = V::<L>::load(ce);
            let d = x.map(y, |x, y| x - y);
            let ad = d.map(d, |d, _| d.abs());
            let ae = y.map(y, |y, _| y.abs());
            max_abs = max_abs.map(ad, max);
            sum_abs = sum_abs.map(ad, |s, ad| s + ad);
            let den = ae.map(floor, max);
            max_rel = max_rel.map(ad.map(den, |ad, den| ad / den), max);
            dot = dot.acc::<FMA>(x, y);
            aa = aa.acc::<FMA>(x, x);
            ee = ee.acc::<FMA>(y, y);
            dd = dd.acc::<FMA>(d, d);
            // Not fused: the same rounding as the scalar path, so both decide alike.
            let limit = atol.map(rtol.map(ae, |r, ae| r * ae), |a, r| a + r);
            mismatches = mismatches.map(ad.map(limit, |ad, lim| if ad > lim { 1.0 } else { 0.0 }), |m, b| m + b);
        }
        *self = Lanes { max_abs, sum_abs, max_rel, dot, aa, ee, dd, mismatches };
    }

    fn add_to(self, s: &mut Sums) {
        s.max_abs = max(s.max_abs, self.max_abs.hmax());
        s.sum_abs += self.sum_abs.sum();
        s.max_rel = max(s.max_rel, self.max_rel.hmax());
        s.dot += self.dot.sum();
        s.aa += self.aa.sum();
        s.ee += self.ee.sum();
        s.dd += self.dd.sum();
        s.mismatches += self.mismatches.sum() as usize;
    }
}

#[inline(always)]
fn sums<const L: usize, const FMA: bool>(a: &[f32], e: &[f32], spans: Spans, tol: Tol) -> Sums {
    let mut wide = Lanes::<L>::new();
    let mut tail = Lanes::<1>::new();
    let mut n = 0;
    for &(start, end) in spans {
        let (a, e) = (&a[start..end], &e[start..end]);
        let body = a.len() / L * L;
        wide.run::<FMA>(&a[..body], &e[..body], tol);
        tail.run::<false>(&a[body..], &e[body..], tol);
        n += end - start;
    }
    let mut s = Sums { n, max_abs: -1.0, ..Sums::default() };
    wide.add_to(&mut s);
    tail.add_to(&mut s);
    s
}

#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
use x86::{sums_avx2, sums_avx512};

fn sums_portable(a: &[f32], e: &[f32], spans: Spans, tol: Tol) -> Sums {
    sums::<4, false>(a, e, spans, tol)
}

/// Which instruction set the kernel uses on this machine (for benchmark reports).
pub fn isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return "avx2";
        }
    }
    "portable"
}

/// The sums of the elements of `spans`, with the widest kernel this CPU runs.
pub fn chunk_sums(a: &[f32], e: &[f32], spans: Spans, tol: Tol) -> Sums {
    match isa() {
        // SAFETY: `isa` checked that the CPU has the features these functions are compiled for.
        #[cfg(target_arch = "x86_64")]
        "avx512" => unsafe { sums_avx512(a, e, spans, tol) },
        #[cfg(target_arch = "x86_64")]
        "avx2" => unsafe { sums_avx2(a, e, spans, tol) },
        _ => sums_portable(a, e, spans, tol),
    }
}

/// The first index in `spans` whose `(|a - e|, |e|)` satisfy `pred` (all finite). Blocks of 8
/// are tested at once so the scan runs at cache speed; it stops at the first hit.
#[inline(always)]
fn first_where(a: &[f32], e: &[f32], spans: Spans, pred: impl Fn(f64, f64) -> bool + Copy) -> Option<usize> {
    let hit = |i: usize| pred((a[i] as f64 - e[i] as f64).abs(), (e[i] as f64).abs());
    for &(start, end) in spans {
        let mut i = start;
        while i + 8 <= end {
            if (i..i + 8).fold(false, |any, j| any | hit(j)) {
                return (i..i + 8).find(|&j| hit(j));
            }
            i += 8;
        }
        if let Some(j) = (i..end).find(|&j| hit(j)) {
            return Some(j);
        }
    }
    None
}

/// The first element of `spans` outside allclose (decided exactly as [`chunk_sums`] counts).
pub fn first_mismatch(a: &[f32], e: &[f32], spans: Spans, tol: Tol) -> Option<usize> {
    first_where(a, e, spans, |ad, ae| ad > tol.atol + tol.rtol * ae)
}

/// The first element of `spans` with `|a - e| == value` (computed in f64 as [`chunk_sums`] does,
/// so its `max_abs` is found exactly).
pub fn first_equal(a: &[f32], e: &[f32], spans: Spans, value: f64) -> Option<usize> {
    first_where(a, e, spans, |ad, _| ad == value)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Kernel = fn(&[f32], &[f32], Spans, Tol) -> Sums;

    /// Every kernel this CPU can run, so each is tested where it exists.
    fn kernels() -> Vec<(&'static str, Kernel)> {
        let mut k: Vec<(&'static str, Kernel)> = vec![("portable", sums_portable)];
        #[cfg(target_arch = "x86_64")]
        {
            if matches!(isa(), "avx512") {
                // SAFETY: the CPU has the features (checked by `isa`).
                k.push(("avx512", |a, e, s, t| unsafe { sums_avx512(a, e, s, t) }));
            }
            if matches!(isa(), "avx512" | "avx2") {
                k.push(("avx2", |a, e, s, t| unsafe { sums_avx2(a, e, s, t) }));
            }
        }
        k
    }

    #[test]
    fn every_kernel_agrees_with_the_scalar_loop() {
        let mut x = 5u64;
        let mut r = move || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        let n = 1037;
        let e: Vec<f32> = (0..n).map(|_| (r() * 8.0 - 4.0) as f32).collect();
        let a: Vec<f32> = e.iter().map(|&x| x + (r() * 2e-3 - 1e-3) as f32).collect();
        let tol = Tol { atol: 1e-4, rtol: 1e-3, rel_floor: 1e-4 };
        for spans in [vec![(0, n)], vec![(3, 50), (64, 64), (100, 1037)]] {
            let want = sums::<1, false>(&a, &e, &spans, tol);
            assert!(want.mismatches > 0 && want.mismatches < want.n);
            for (name, k) in kernels() {
                let got = k(&a, &e, &spans, tol);
                assert_eq!(
                    (got.n, got.max_abs, got.max_rel, got.mismatches),
                    (want.n, want.max_abs, want.max_rel, want.mismatches),
                    "{name}"
                );
                for (g, w) in [(got.sum_abs, want.sum_abs), (got.dot, want.dot), (got.aa, want.aa), (got.dd, want.dd)] {
                    assert!(((g - w) / w).abs() < 1e-12, "{name}: {g} vs {w}");
                }
            }
        }
    }

    const TOL0: Tol = Tol { atol: 0.0, rtol: 0.0, rel_floor: 1e-6 };

    #[test]
    fn non_finite_input_is_flagged() {
        for (name, k) in kernels() {
            for bad in [f32::NAN, f32::INFINITY] {
                let mut a = vec![1.0f32; 40];
                a[17] = bad;
                let e = vec![1.0f32; 40];
                assert!(!k(&a, &e, &[(0, 40)], TOL0).finite(), "{name}");
                assert!(!k(&e, &a, &[(0, 40)], TOL0).finite(), "{name}");
            }
        }
    }

    #[test]
    fn lookups_find_the_first_hit_in_span_order() {
        let a = [0.0f32; 30];
        let mut e = [0.0f32; 30];
        e[5] = 1.0;
        e[20] = 2.0;
        e[25] = 1.0;
        assert_eq!(first_mismatch(&a, &e, &[(0, 30)], TOL0), Some(5));
        assert_eq!(first_mismatch(&a, &e, &[(6, 21)], TOL0), Some(20));
        assert_eq!(first_equal(&a, &e, &[(21, 30)], 1.0), Some(25));
        assert_eq!(first_equal(&a, &e, &[(0, 30)], 2.0), Some(20));
        assert_eq!(first_mismatch(&a, &e, &[(6, 20), (26, 30)], TOL0), None);
    }
}
