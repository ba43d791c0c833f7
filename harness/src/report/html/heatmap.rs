//! The heat map of one trial: largest |error| per token position (columns) and layer (rows).
//! Each layer is represented by its output tap (else its last token tap); taps outside the layers
//! (embeddings, final norm, logits) are rows of their own, and the first divergent tap gets a row
//! too. Within tolerance is drawn in pale blues, beyond it in yellow to dark red, so the first
//! row and column where the error appears stand out.

use std::fmt::Write;

use super::{FAIL, MUTED, short_label};
use crate::report::terminal::num;
use crate::report::{TapReport, TrialReport, escape_xml as esc};
use crate::tolerance::DEFAULT_ATOL;

/// At most this many columns; longer sequences are bucketed (the max over each bucket).
const MAX_COLUMNS: usize = 240;

fn lerp(a: (u8, u8, u8), b: (u8, u8, u8), t: f64) -> String {
    let m = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * t.clamp(0.0, 1.0)).round() as u8;
    format!("#{:02x}{:02x}{:02x}", m(a.0, b.0), m(a.1, b.1), m(a.2, b.2))
}

/// Color of an error `x` against `atol`: `log10(x / atol)` <= 0 is a ramp of pale blues, > 0 a
/// ramp from yellow to dark red (a deliberate jump at the tolerance).
pub fn color(x: f32, atol: f64) -> String {
    if x.is_infinite() {
        return "#4a0d0d".into();
    }
    if x <= 0.0 {
        return "#f8f9fa".into();
    }
    let t = (x as f64 / atol).log10();
    let ramp: &[(f64, (u8, u8, u8))] = if t <= 0.0 {
        &[(-6.0, (0xf8, 0xf9, 0xfa)), (-3.0, (0xe7, 0xf5, 0xff)), (-1.0, (0xa5, 0xd8, 0xff)), (0.0, (0x74, 0xc0, 0xfc))]
    } else {
        &[
            (0.0, (0xff, 0xe0, 0x66)),
            (1.0, (0xff, 0xa9, 0x4d)),
            (2.0, (0xf7, 0x67, 0x07)),
            (3.0, (0xe0, 0x31, 0x31)),
            (4.5, (0x86, 0x2e, 0x2e)),
        ]
    };
    if t <= ramp[0].0 {
        return lerp(ramp[0].1, ramp[0].1, 0.0);
    }
    for w in ramp.windows(2) {
        if t <= w[1].0 {
            return lerp(w[0].1, w[1].1, (t - w[0].0) / (w[1].0 - w[0].0));
        }
    }
    lerp(ramp[ramp.len() - 1].1, ramp[ramp.len() - 1].1, 0.0)
}

struct Row<'a> {
    label: String,
    tap: &'a TapReport,
    first: bool,
}

fn rows(r: &TrialReport) -> Vec<Row<'_>> {
    let first = r.first_divergence;
    let token: Vec<(usize, &TapReport)> =
        r.taps.iter().enumerate().filter(|(_, t)| t.row_max_abs.is_some() && t.shape.len() >= 2).collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < token.len() {
        let layer = short_label(&token[i].1.name).0;
        let mut j = i;
        while j + 1 < token.len() && short_label(&token[j + 1].1.name).0 == layer {
            j += 1;
        }
        let group = &token[i..=j];
        match layer {
            None => {
                for &(k, t) in group {
                    out.push(Row { label: short_label(&t.name).1, tap: t, first: Some(k) == first });
                }
            }
            Some(l) => {
                let rep = group
                    .iter()
                    .rev()
                    .find(|(_, t)| short_label(&t.name).1 == "output")
                    .unwrap_or(&group[group.len() - 1]);
                for &(k, t) in group {
                    if Some(k) == first && k != rep.0 {
                        out.push(Row {
                            label: format!("layer {l} · {}", short_label(&t.name).1), tap: t, first: true
                        });
                    }
                }
                let short = short_label(&rep.1.name).1;
                let label = if short == "output" { format!("layer {l}") } else { format!("layer {l} · {short}") };
                out.push(Row { label, tap: rep.1, first: Some(rep.0) == first });
            }
        }
        i = j + 1;
    }
    out
}

pub fn render(r: &TrialReport) -> Option<String> {
    let rows = rows(r);
    let first = rows.first()?;
    let (b, s) = (first.tap.shape[0], first.tap.shape[1]);
    let rows: Vec<Row> = rows.into_iter().filter(|row| row.tap.shape[0] == b && row.tap.shape[1] == s).collect();
    let bucket = (b * s).div_ceil(MAX_COLUMNS).max(1);
    let cols_per_seq = s.div_ceil(bucket);
    let gap = if b > 1 { 10.0 } else { 0.0 };
    let cw = (760.0 / (cols_per_seq * b) as f64).clamp(3.0, 34.0);
    let rh = if rows.len() <= 24 { 22.0 } else { (520.0 / rows.len() as f64).max(8.0) };
    let label_w = rows.iter().map(|r| r.label.chars().count()).max().unwrap_or(8) as f64 * 6.8 + 18.0;
    let (ml, mt) = (label_w, if b > 1 { 34.0 } else { 18.0 });
    let gw = cols_per_seq as f64 * cw * b as f64 + gap * (b - 1) as f64;
    let gh = rh * rows.len() as f64;
    let mr = 190.0;
    let legend_h = 64.0;
    let (w, h) = (ml + gw + mr, mt + gh + 26.0 + legend_h);
    let atols: Vec<f64> =
        rows.iter().map(|r| r.tap.tolerance.atol.filter(|a| *a > 0.0).unwrap_or(DEFAULT_ATOL)).collect();
    let col_x = |seq: usize, c: usize| ml + seq as f64 * (cols_per_seq as f64 * cw + gap) + c as f64 * cw;

    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg class="heatmap" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w:.0} {h:.0}" width="{w:.0}" height="{h:.0}" role="img" aria-label="largest error per token position and layer">"#
    );
    o.push_str(r##"<defs><pattern id="pad" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#f1f3f5"/><line x1="0" y1="0" x2="0" y2="6" stroke="#ced4da" stroke-width="2"/></pattern></defs>"##);
    let _ = write!(o, r##"<rect x="0" y="0" width="{w:.0}" height="{h:.0}" fill="#fff"/>"##);
    if b > 1 {
        for seq in 0..b {
            let _ = write!(
                o,
                r#"<text x="{:.1}" y="14" text-anchor="middle" font-size="11" fill="{MUTED}">sequence {seq}</text>"#,
                col_x(seq, 0) + cols_per_seq as f64 * cw / 2.0
            );
        }
    }
    for (ri, row) in rows.iter().enumerate() {
        let yy = mt + ri as f64 * rh;
        let vals = row.tap.row_max_abs.as_deref().unwrap_or(&[]);
        let (fill, weight) = if row.first { (FAIL, "700") } else { ("#424a53", "400") };
        let _ = write!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11" font-weight="{weight}" fill="{fill}"><title>{}</title>{}</text>"#,
            ml - 8.0,
            yy + rh / 2.0 + 4.0,
            esc(&row.tap.name),
            esc(&row.label)
        );
        o.push_str(r#"<g class="cells">"#);
        for seq in 0..b {
            for c in 0..cols_per_seq {
                let (p0, p1) = (c * bucket, ((c + 1) * bucket).min(s));
                let cell = &vals[(seq * s + p0).min(vals.len())..(seq * s + p1).min(vals.len())];
                // NaN = not compared (padding); a bucket is padding only when all of it is.
                let compared: Vec<f32> = cell.iter().copied().filter(|v| !v.is_nan()).collect();
                let pos = if bucket == 1 { format!("position {p0}") } else { format!("positions {p0}–{}", p1 - 1) };
                let (fill, title) = if compared.is_empty() {
                    ("url(#pad)".to_string(), format!("{} · sequence {seq}, {pos}: padding, not compared", row.label))
                } else {
                    let m = compared.iter().copied().fold(0f32, f32::max);
                    (
                        color(m, atols[ri]),
                        format!(
                            "{} · sequence {seq}, {pos}: max |error| {} (atol {})",
                            row.label,
                            num(m as f64),
                            num(atols[ri])
                        ),
                    )
                };
                let _ = write!(
                    o,
                    r##"<rect x="{:.2}" y="{yy:.2}" width="{:.2}" height="{:.2}" fill="{fill}" stroke="#fff" stroke-width="{}"><title>{}</title></rect>"##,
                    col_x(seq, c),
                    cw,
                    rh,
                    if cw >= 8.0 { 1 } else { 0 },
                    esc(&title)
                );
            }
        }
        o.push_str("</g>");
        if row.first {
            let _ = write!(
                o,
                r##"<text x="{:.1}" y="{:.1}" font-size="12" font-weight="700" fill="{FAIL}">◀ first divergence</text>"##,
                ml + gw + 8.0,
                yy + rh / 2.0 + 4.0
            );
        }
    }
    // Position ticks under the grid.
    let every = ((40.0 / cw).ceil() as usize).max(1);
    let ty = mt + gh + 14.0;
    for seq in 0..b {
        for c in (0..cols_per_seq).step_by(every) {
            let _ = write!(
                o,
                r#"<text x="{:.1}" y="{ty:.1}" text-anchor="middle" font-size="10" fill="{MUTED}">{}</text>"#,
                col_x(seq, c) + cw / 2.0,
                c * bucket
            );
        }
    }
    let _ = write!(
        o,
        r#"<text x="{:.1}" y="{:.1}" font-size="11" fill="{MUTED}">token position{}</text>"#,
        ml,
        ty + 14.0,
        if bucket > 1 { format!(" (max over buckets of {bucket})") } else { String::new() }
    );
    legend(&mut o, ml, ty + 30.0, &atols);
    o.push_str("</svg>");
    Some(o)
}

/// A row of swatches from far below to far above the tolerance, with their values.
fn legend(o: &mut String, x0: f64, y0: f64, atols: &[f64]) {
    let common = atols.iter().all(|a| *a == atols[0]).then(|| atols[0]);
    let steps: [f64; 10] = [-5.0, -4.0, -3.0, -2.0, -1.0, 0.5, 1.0, 2.0, 3.0, 4.0];
    let sw = 42.0;
    for (i, e) in steps.iter().enumerate() {
        let a = common.unwrap_or(1.0);
        let v = a * 10f64.powf(*e);
        let xx = x0 + i as f64 * sw;
        let label = match common {
            Some(_) => format!("{v:.0e}"),
            None => format!("{:.0e}×", 10f64.powf(*e)),
        };
        let _ = write!(
            o,
            r##"<rect x="{xx:.1}" y="{y0:.1}" width="{:.1}" height="12" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10" fill="{MUTED}">{label}</text>"##,
            sw - 2.0,
            color(v as f32, a),
            xx + sw / 2.0 - 1.0,
            y0 + 24.0
        );
    }
    let tx = x0 + 5.0 * sw - 1.0;
    let _ = write!(
        o,
        r##"<line x1="{tx:.1}" x2="{tx:.1}" y1="{:.1}" y2="{:.1}" stroke="{FAIL}" stroke-width="2"/><text x="{:.1}" y="{:.1}" font-size="10" fill="{FAIL}" text-anchor="middle">{}</text>"##,
        y0 - 4.0,
        y0 + 14.0,
        tx,
        y0 - 7.0,
        match common {
            Some(a) => format!("atol {}", num(a)),
            None => "atol".into(),
        }
    );
    let _ = write!(
        o,
        r##"<text x="{:.1}" y="{:.1}" font-size="10" fill="{MUTED}">max |error| per position</text>"##,
        x0 + 10.0 * sw + 8.0,
        y0 + 10.0
    );
}
