//! The error-per-tap plot of one case: SQNR of every tap in forward order, one line per engine,
//! the tolerance as a dashed line over a shaded out-of-tolerance zone, layers as bands, and the
//! first divergence marked. SQNR is scale-free, so taps of different magnitude (norms, logits)
//! line up and the drop where the error starts is visible at a glance.

use std::collections::HashMap;
use std::fmt::Write;

use super::{FAIL, MUTED, short_label};
use crate::report::terminal::num;
use crate::report::{TapReport, TrialReport, escape_xml as esc};

/// One engine's line.
pub struct Series<'a> {
    pub report: &'a TrialReport,
    pub color: &'static str,
}

fn fmt_db(x: f64) -> String {
    if x.is_infinite() && x > 0.0 { "∞ (exact)".into() } else { format!("{x:.1} dB") }
}

/// The tolerance of a tap on the SQNR axis: its `sqnr_db` criterion or the SQNR at the allclose
/// limit, whichever is stricter.
fn tolerance_db(taps: &[&TapReport]) -> Option<f64> {
    let at_limit = taps.iter().filter_map(|t| t.sqnr_db_at_tolerance).reduce(f64::max);
    let crit = taps.iter().filter_map(|t| t.tolerance.sqnr_db).reduce(f64::max);
    match (at_limit, crit) {
        (Some(a), Some(c)) => Some(a.max(c)),
        (a, c) => a.or(c),
    }
}

fn nice_step(range: f64) -> f64 {
    [5.0, 10.0, 20.0, 25.0, 50.0, 100.0, 200.0].into_iter().find(|s| range / s <= 7.0).unwrap_or(500.0)
}

pub fn render(series: &[Series<'_>]) -> Option<String> {
    let base = series.iter().find(|s| !s.report.taps.is_empty())?;
    let names: Vec<&str> = base.report.taps.iter().map(|t| t.name.as_str()).collect();
    let n = names.len();
    let by_name: Vec<HashMap<&str, &TapReport>> =
        series.iter().map(|s| s.report.taps.iter().map(|t| (t.name.as_str(), t)).collect()).collect();
    let at = |k: usize, i: usize| by_name[k].get(names[i]).copied();
    let tol: Vec<Option<f64>> =
        (0..n).map(|i| tolerance_db(&(0..series.len()).filter_map(|k| at(k, i)).collect::<Vec<_>>())).collect();

    // Y range over every finite value drawn.
    let mut vals: Vec<f64> = tol.iter().flatten().copied().collect();
    for k in 0..series.len() {
        vals.extend((0..n).filter_map(|i| at(k, i)?.metrics.as_ref().map(|m| m.sqnr_db)).filter(|v| v.is_finite()));
    }
    let (vmin, vmax) = vals.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let (vmin, vmax) = if vals.is_empty() { (0.0, 100.0) } else { (vmin.min(0.0), vmax) };
    let step = nice_step((vmax - vmin).max(10.0));
    let lo = (vmin / step).floor() * step;
    let hi = ((vmax + step * 0.3) / step).ceil() * step;

    // Geometry.
    let labels: Vec<(Option<usize>, String)> = names.iter().map(|nm| short_label(nm)).collect();
    let step_x = (900.0 / n as f64).clamp(14.0, 56.0);
    let longest = labels.iter().map(|l| l.1.chars().count()).max().unwrap_or(4) as f64;
    // One row above the plot per failing engine for its first-divergence label.
    let label_rows = series.iter().filter(|se| se.report.first_divergence.is_some()).count() as f64;
    let (ml, mr, mt, ph) = (62.0, 28.0, 30.0 + 18.0 * label_rows, 300.0);
    let mb = (longest * 6.3 * 0.71 + 22.0).min(230.0);
    let pw = step_x * n as f64;
    let (w, h) = (ml + pw + mr, mt + ph + mb);
    let x = |i: usize| ml + step_x * (i as f64 + 0.5);
    let lane = mt + 10.0; // the "exact" lane (SQNR = ∞)
    let top = mt + 26.0;
    let y = |v: f64| {
        if v.is_infinite() && v > 0.0 { lane } else { top + (hi - v.clamp(lo, hi)) / (hi - lo) * (mt + ph - top) }
    };
    let bottom = mt + ph;

    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="tap-plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w:.0} {h:.0}" width="{w:.0}" height="{h:.0}" role="img" aria-label="SQNR per tap in forward order">"#
    );
    let _ = write!(s, r##"<rect x="0" y="0" width="{w:.0}" height="{h:.0}" fill="#fff"/>"##);

    // Layer bands, labelled above the plot.
    let mut i = 0;
    let mut band = 0;
    while i < n {
        let layer = labels[i].0;
        let mut j = i;
        while j + 1 < n && labels[j + 1].0 == layer {
            j += 1;
        }
        if let Some(l) = layer {
            let (x0, x1) = (ml + step_x * i as f64, ml + step_x * (j + 1) as f64);
            let fill = if band % 2 == 0 { "#eef1f5" } else { "#f7f8fa" };
            band += 1;
            let _ = write!(
                s,
                r#"<rect class="layer-band" x="{x0:.1}" y="{mt:.1}" width="{:.1}" height="{ph:.1}" fill="{fill}"/>"#,
                x1 - x0
            );
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="{MUTED}">layer {l}</text>"#,
                (x0 + x1) / 2.0,
                mt - 8.0
            );
        }
        i = j + 1;
    }

    // Grid and y axis.
    let mut v = lo;
    while v <= hi + 1e-9 {
        let yy = y(v);
        let _ = write!(
            s,
            r##"<line x1="{ml}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#d8dde3" stroke-width="1"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11" fill="{MUTED}">{v:.0}</text>"##,
            ml + pw,
            ml - 6.0,
            yy + 4.0
        );
        v += step;
    }
    let _ = write!(
        s,
        r##"<line x1="{ml}" x2="{:.1}" y1="{lane:.1}" y2="{lane:.1}" stroke="#d8dde3" stroke-dasharray="2 3"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11" fill="{MUTED}">exact</text>"##,
        ml + pw,
        ml - 6.0,
        lane + 4.0
    );
    let _ = write!(
        s,
        r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle" font-size="12" fill="{MUTED}">SQNR (dB), higher is better</text>"#,
        (top + bottom) / 2.0
    );

    // Tolerance: a step line per tap, the zone below it shaded.
    let mut zone = String::new();
    let mut line = String::new();
    for (i, t) in tol.iter().enumerate() {
        let Some(t) = t else { continue };
        let (x0, x1, yy) = (ml + step_x * i as f64, ml + step_x * (i + 1) as f64, y(*t));
        let _ = write!(
            zone,
            r#"<rect x="{x0:.1}" y="{yy:.1}" width="{:.1}" height="{:.1}"/>"#,
            x1 - x0,
            (bottom - yy).max(0.0)
        );
        let _ = write!(line, "M{x0:.1} {yy:.1}H{x1:.1}");
    }
    if !line.is_empty() {
        let _ = write!(s, r#"<g class="tolerance-zone" fill="{FAIL}" fill-opacity="0.07">{zone}</g>"#);
        let _ = write!(
            s,
            r#"<path class="tolerance" d="{line}" fill="none" stroke="{FAIL}" stroke-width="1.5" stroke-dasharray="6 4"><title>tolerance: the SQNR a tap has when every element is off by exactly atol + rtol·|golden| (or its sqnr_db criterion)</title></path>"#
        );
    }

    // First divergence of each failing engine: a vertical line, labelled above the plot.
    let mut row = 0.0;
    for se in series {
        let Some(t) = se.report.first_divergent_tap() else { continue };
        let Some(i) = names.iter().position(|nm| *nm == t.name) else { continue };
        let xx = x(i);
        let (layer, short) = &labels[i];
        let place = match layer {
            Some(l) => format!("layer {l} · {short}"),
            None => short.clone(),
        };
        let ty = 16.0 + 18.0 * row;
        row += 1.0;
        let _ = write!(
            s,
            r#"<line class="first-divergence" x1="{xx:.1}" x2="{xx:.1}" y1="{:.1}" y2="{bottom:.1}" stroke="{}" stroke-width="1.5" stroke-dasharray="4 3"/>"#,
            ty + 4.0,
            se.color
        );
        // Text on the side of the line with more room.
        let (tx, anchor) = if xx < ml + pw * 0.6 { (xx - 4.0, "start") } else { (xx + 4.0, "end") };
        let _ = write!(
            s,
            r##"<text x="{tx:.1}" y="{ty:.1}" text-anchor="{anchor}" font-size="12" font-weight="700" fill="{}">▼ first divergence of {}: {}</text>"##,
            se.color,
            esc(&se.report.engine),
            esc(&place)
        );
    }

    // Lines and points, one series per engine.
    for (k, se) in series.iter().enumerate() {
        let mut path = String::new();
        let mut pen_up = true;
        let mut points = String::new();
        for i in 0..n {
            let Some(t) = at(k, i) else {
                pen_up = true;
                continue;
            };
            let Some(m) = &t.metrics else {
                pen_up = true;
                let (xx, yy) = (x(i), bottom - 6.0);
                let _ = write!(
                    points,
                    r#"<path class="point missing" d="M{:.1} {:.1}l8 8m0 -8l-8 8" stroke="{FAIL}" stroke-width="2"><title>{}: {}</title></path>"#,
                    xx - 4.0,
                    yy - 4.0,
                    esc(&t.name),
                    esc(&crate::report::terminal::tap_problem(t).unwrap_or_default())
                );
                continue;
            };
            let (xx, yy) = (x(i), y(m.sqnr_db));
            let _ = write!(path, "{}{xx:.1} {yy:.1}", if pen_up { "M" } else { "L" });
            pen_up = false;
            let fail = !t.status.is_pass();
            let title = format!(
                "{} · {}\nSQNR {}, max_abs {}, cosine {:.6}{}",
                se.report.engine,
                t.name,
                fmt_db(m.sqnr_db),
                num(m.max_abs),
                m.cosine,
                if fail { " — out of tolerance" } else { "" }
            );
            if fail {
                let _ = write!(
                    points,
                    r##"<circle class="point fail" cx="{xx:.1}" cy="{yy:.1}" r="4.5" fill="{FAIL}" stroke="#fff" stroke-width="1.5"><title>{}</title></circle>"##,
                    esc(&title)
                );
            } else {
                let _ = write!(
                    points,
                    r#"<circle class="point" cx="{xx:.1}" cy="{yy:.1}" r="3" fill="{}"><title>{}</title></circle>"#,
                    se.color,
                    esc(&title)
                );
            }
        }
        let _ = write!(
            s,
            r#"<g class="series" data-engine="{}"><path class="line" d="{path}" fill="none" stroke="{}" stroke-width="2" stroke-linejoin="round"/>{points}</g>"#,
            esc(&se.report.engine),
            se.color
        );
    }

    // Axes frame and tap labels (red when some engine is out of tolerance there).
    let _ = write!(
        s,
        r##"<line x1="{ml}" x2="{:.1}" y1="{bottom:.1}" y2="{bottom:.1}" stroke="#8c959f"/><line x1="{ml}" x2="{ml}" y1="{mt:.1}" y2="{bottom:.1}" stroke="#8c959f"/>"##,
        ml + pw
    );
    let first: Vec<usize> = series
        .iter()
        .filter_map(|se| se.report.first_divergent_tap().and_then(|t| names.iter().position(|nm| *nm == t.name)))
        .collect();
    for i in 0..n {
        let failing = (0..series.len()).any(|k| at(k, i).is_some_and(|t| !t.status.is_pass()));
        let (fill, weight) = match (first.contains(&i), failing) {
            (true, _) => (FAIL, "700"),
            (false, true) => (FAIL, "400"),
            _ => ("#424a53", "400"),
        };
        let _ = write!(
            s,
            r#"<text class="tap-label" transform="translate({:.1} {:.1}) rotate(-45)" text-anchor="end" font-size="11" font-weight="{weight}" fill="{fill}"><title>{}</title>{}</text>"#,
            x(i) + 3.0,
            bottom + 12.0,
            esc(names[i]),
            esc(&labels[i].1)
        );
    }
    s.push_str("</svg>");
    Some(s)
}
