//! `index.html`: one static page, no script and no network (opens from disk). A summary table of
//! every trial; then, per case with a trial that did not pass, the first divergence in words, the
//! hints, the error-per-tap plot (one line per engine) and per failing trial the heat map of error
//! by token position and layer, with the per-tap table folded below.

use std::fmt::Write;
use std::path::Path;

use super::{TrialReport, Verdict, case_path, escape_xml as esc, terminal};

pub mod heatmap;
pub mod plot;

pub(crate) const FAIL: &str = "#e03131";
pub(crate) const MUTED: &str = "#656d76";
/// Line colors of the engines of one case: cool for engines that pass, warm for the others.
const PASSING: &[&str] = &["#1c7ed6", "#2b8a3e", "#495057", "#0c8599"];
const FAILING: &[&str] = &["#e8590c", "#7048e8", "#c2255c", "#f08c00"];

/// `(layer, short name)`: `model.layers.1.mlp.up_proj` -> `(Some(1), "mlp.up_proj")`,
/// `model.layers.1` -> `(Some(1), "output")`, `model.norm` -> `(None, "norm")`.
pub fn short_label(name: &str) -> (Option<usize>, String) {
    let segs: Vec<&str> = name.split('.').collect();
    if let Some(k) = segs.iter().position(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())) {
        let layer = segs[k].parse().ok();
        let rest = segs[k + 1..].join(".");
        return (layer, if rest.is_empty() { "output".into() } else { rest });
    }
    (None, name.strip_prefix("model.").unwrap_or(name).to_string())
}

fn place(name: &str) -> String {
    match short_label(name) {
        (Some(l), s) => format!("layer {l} · {s}"),
        (None, s) => s,
    }
}

const STYLE: &str = r#"
:root { --pass: #2b8a3e; --fail: #e03131; --error: #e67700; --ink: #1f2328; --muted: #656d76; --line: #d0d7de; --panel: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 22px 28px 60px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 0 0 10px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
.counts { margin: 0 0 18px; color: var(--muted); }
.badge { display: inline-block; min-width: 44px; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 700; text-align: center; color: #fff; }
.badge.pass { background: var(--pass); } .badge.fail { background: var(--fail); } .badge.error { background: var(--error); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 12px; color: var(--muted); font-weight: 600; background: var(--panel); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.summary tr.fail td:first-child, table.summary tr.error td:first-child { font-weight: 700; }
section.case { border: 1px solid var(--line); border-radius: 10px; padding: 18px 22px 14px; margin: 26px 0; }
.file { font-weight: 400; color: var(--muted); font-size: 13px; margin-left: 8px; }
.callout { border-left: 5px solid var(--fail); background: #fff5f5; padding: 10px 14px; margin: 10px 0; border-radius: 0 6px 6px 0; }
.callout.error { border-color: var(--error); background: #fff9db; }
.callout .big { font-size: 16px; }
.callout .where { color: var(--fail); font-weight: 700; }
ul.hints { margin: 6px 0 6px 18px; padding: 0; }
ul.hints .kind { font-size: 11px; color: var(--muted); }
figure { margin: 14px 0 6px; }
figcaption { color: var(--muted); font-size: 12.5px; margin: 2px 0 6px; }
.scroll { overflow-x: auto; }
.legend { display: flex; flex-wrap: wrap; gap: 16px; font-size: 12.5px; margin: 2px 0 4px; }
.legend span { display: inline-flex; align-items: center; gap: 6px; }
.swatch { display: inline-block; width: 22px; height: 0; border-top: 3px solid; }
.swatch.dash { border-top-style: dashed; border-top-width: 2px; }
details { margin: 8px 0; }
summary { cursor: pointer; color: var(--muted); }
table.taps td { font-size: 12.5px; padding: 3px 8px; }
table.taps tr.bad td { background: #fff5f5; }
table.taps tr.first td { background: #ffe3e3; font-weight: 700; }
.rerun { color: var(--muted); font-size: 12.5px; }
footer { color: var(--muted); font-size: 12px; margin-top: 30px; }
"#;

fn badge(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => r#"<span class="badge pass">pass</span>"#,
        Verdict::Fail => r#"<span class="badge fail">FAIL</span>"#,
        Verdict::Error => r#"<span class="badge error">ERROR</span>"#,
    }
}

fn anchor(case: &str) -> String {
    format!("case-{}", case.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect::<String>())
}

fn summary_table(o: &mut String, reports: &[TrialReport], root: &Path) {
    o.push_str(r#"<table class="summary"><thead><tr><th>result</th><th>trial</th><th>case file</th><th class="num">taps ok</th><th>first divergence</th><th class="num">max_abs</th><th class="num">SQNR dB</th><th class="num">cosine</th></tr></thead><tbody>"#);
    for r in reports {
        let class = match r.verdict {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Error => "error",
        };
        let ok = r.taps.iter().filter(|t| t.status.is_pass()).count();
        let trial = if r.verdict == Verdict::Pass {
            esc(&r.trial)
        } else {
            format!(r##"<a href="#{}">{}</a>"##, anchor(&r.case), esc(&r.trial))
        };
        let (first, m) = match (r.first_divergent_tap(), &r.error) {
            (Some(t), _) => (format!(r#"<span class="mono">{}</span>"#, esc(&t.name)), t.metrics.as_ref()),
            (None, Some(e)) => (esc(&first_line(e, 110)), None),
            (None, None) => ("—".into(), None),
        };
        let cell = |f: &dyn Fn(&crate::metrics::Metrics) -> String| m.map(f).unwrap_or_default();
        let _ = write!(
            o,
            r#"<tr class="{class}"><td>{}</td><td class="mono">{trial}</td><td class="mono">{}</td><td class="num">{ok}/{}</td><td>{first}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
            badge(r.verdict),
            esc(&case_path(root, &r.case_file)),
            r.taps.len(),
            cell(&|m| num(m.max_abs)),
            cell(&|m| db(m.sqnr_db)),
            cell(&|m| format!("{:.6}", m.cosine)),
        );
    }
    o.push_str("</tbody></table>");
}

fn first_line(s: &str, max: usize) -> String {
    let l = s.lines().next().unwrap_or("");
    if l.chars().count() > max { format!("{}…", l.chars().take(max).collect::<String>()) } else { l.to_string() }
}

fn num(x: f64) -> String {
    terminal::num(x)
}

fn db(x: f64) -> String {
    if x.is_infinite() && x > 0.0 { "∞".into() } else { format!("{x:.1}") }
}

fn callout(o: &mut String, r: &TrialReport) {
    let class = if r.verdict == Verdict::Error { "callout error" } else { "callout" };
    let _ = write!(
        o,
        r#"<div class="{class}"><div class="big">{} <b class="mono">{}</b>"#,
        badge(r.verdict),
        esc(&r.trial)
    );
    if let Some(t) = r.first_divergent_tap() {
        let _ = write!(o, r#" — first divergence at <span class="where">{}</span>"#, esc(&place(&t.name)));
    }
    o.push_str("</div>");
    if let Some(e) = &r.error {
        let _ = write!(o, r#"<div class="mono">{}</div>"#, esc(e));
    }
    if let Some(t) = r.first_divergent_tap() {
        let _ = write!(o, r#"<div><span class="mono">{}</span> {}"#, esc(&t.name), esc(&format!("{:?}", t.shape)));
        if let Some(m) = &t.metrics {
            let _ = write!(
                o,
                ": max_abs {} at {}, cosine {:.6}, SQNR {} dB",
                num(m.max_abs),
                terminal::index(&t.max_abs_index),
                m.cosine,
                db(m.sqnr_db)
            );
        }
        o.push_str("</div>");
        if let Some(p) = terminal::tap_problem(t) {
            let _ = write!(o, "<div>{}</div>", esc(&p));
        }
    }
    if !r.hints.is_empty() {
        o.push_str(r#"<ul class="hints">"#);
        for h in &r.hints {
            let kind = serde_json::to_value(h.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            let _ = write!(
                o,
                r#"<li>{} <span class="kind">({}, score {:.2}, at <span class="mono">{}</span>)</span></li>"#,
                esc(&h.message),
                esc(&kind),
                h.score,
                esc(&h.tap)
            );
        }
        o.push_str("</ul>");
    }
    o.push_str("</div>");
}

fn tap_table(o: &mut String, r: &TrialReport) {
    let bad = r.taps.iter().filter(|t| !t.status.is_pass()).count();
    let _ = write!(
        o,
        r#"<details><summary>per-tap metrics of <span class="mono">{}</span>: {} taps, {bad} not within tolerance</summary><table class="taps"><thead><tr><th></th><th>tap</th><th>shape</th><th class="num">max_abs</th><th>at</th><th class="num">mean_abs</th><th class="num">max_rel</th><th class="num">cosine</th><th class="num">SQNR dB</th><th class="num">mismatch</th><th>verdict</th></tr></thead><tbody>"#,
        esc(&r.trial),
        r.taps.len()
    );
    for (i, t) in r.taps.iter().enumerate() {
        let first = Some(i) == r.first_divergence;
        let class = if first {
            "first"
        } else if !t.status.is_pass() {
            "bad"
        } else {
            ""
        };
        let verdict = if t.status.is_pass() { "ok".to_string() } else { terminal::tap_problem(t).unwrap_or_default() };
        let _ = write!(
            o,
            r#"<tr class="{class}"><td>{}</td><td class="mono">{}</td><td class="mono">{:?}</td>"#,
            if first { "▶" } else { "" },
            esc(&t.name),
            t.shape
        );
        match &t.metrics {
            Some(m) => {
                let _ = write!(
                    o,
                    r#"<td class="num">{}</td><td class="mono">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{:.6}</td><td class="num">{}</td><td class="num">{}/{}</td>"#,
                    num(m.max_abs),
                    if m.max_abs > 0.0 { terminal::index(&t.max_abs_index) } else { "-".into() },
                    num(m.mean_abs),
                    num(m.max_rel),
                    m.cosine,
                    db(m.sqnr_db),
                    m.mismatches,
                    m.n + m.nan + m.inf
                );
            }
            None => o.push_str(r#"<td colspan="7"></td>"#),
        }
        let _ = write!(o, "<td>{}</td></tr>", esc(&verdict));
    }
    o.push_str("</tbody></table></details>");
}

fn case_section(o: &mut String, case: &str, trials: &[&TrialReport], root: &Path) {
    let file = trials.first().map(|r| case_path(root, &r.case_file)).unwrap_or_default();
    let _ = write!(
        o,
        r#"<section class="case" id="{}"><h2><span class="mono">{}</span><span class="file mono">{}</span></h2>"#,
        anchor(case),
        esc(case),
        esc(&file)
    );
    for r in trials.iter().filter(|r| r.verdict != Verdict::Pass) {
        callout(o, r);
    }
    // Passing engines first, so the failing lines are drawn on top.
    let (good, bad): (Vec<&TrialReport>, Vec<&TrialReport>) = trials.iter().partition(|r| r.verdict == Verdict::Pass);
    let series: Vec<plot::Series> = good
        .iter()
        .enumerate()
        .map(|(k, r)| plot::Series { report: r, color: PASSING[k % PASSING.len()] })
        .chain(bad.iter().enumerate().map(|(k, r)| plot::Series { report: r, color: FAILING[k % FAILING.len()] }))
        .collect();
    if let Some(svg) = plot::render(&series) {
        o.push_str(r#"<figure><div class="legend">"#);
        for se in series.iter().filter(|se| !se.report.taps.is_empty()) {
            let what = match se.report.first_divergent_tap() {
                Some(t) => format!("diverges at {}", place(&t.name)),
                None if se.report.verdict == Verdict::Pass => "within tolerance everywhere".into(),
                None => "not judged".into(),
            };
            let _ = write!(
                o,
                r#"<span><i class="swatch" style="border-color:{}"></i><b class="mono">{}</b> {}</span>"#,
                se.color,
                esc(&se.report.engine),
                esc(&what)
            );
        }
        let _ = write!(
            o,
            r#"<span><i class="swatch dash" style="border-color:{FAIL}"></i>tolerance (shaded below: out of tolerance)</span><span><svg width="12" height="12"><circle cx="6" cy="6" r="4.5" fill="{FAIL}"/></svg>tap out of tolerance</span></div>"#
        );
        let _ = write!(
            o,
            r#"<div class="scroll">{svg}</div><figcaption>Error per tap in forward order (the order HF ran the modules): SQNR = −10·log10(Σ(engine−golden)² / Σgolden²), one line per engine. The dashed line is the SQNR a tap has when every element is off by exactly atol + rtol·|golden| (or its sqnr_db criterion); hover a point for its metrics.</figcaption></figure>"#
        );
    }
    for r in trials.iter().filter(|r| r.verdict != Verdict::Pass) {
        if let Some(svg) = heatmap::render(r) {
            let _ = write!(
                o,
                r#"<figure><h3>Where the error is: <span class="mono">{}</span></h3><div class="scroll">{svg}</div><figcaption>Largest |engine − golden| per token position (columns) and layer (rows: each layer's output, and the first divergent tap), blue within atol, yellow to red beyond it; hatched positions are padding and not compared.</figcaption></figure>"#,
                esc(&r.trial)
            );
        }
    }
    for r in trials.iter().filter(|r| !r.taps.is_empty()) {
        tap_table(o, r);
    }
    for r in trials.iter().filter(|r| r.verdict != Verdict::Pass) {
        let _ = write!(o, r#"<p class="rerun">rerun: <code>{}</code></p>"#, esc(&r.rerun));
    }
    o.push_str("</section>");
}

/// The whole page.
pub fn render(reports: &[TrialReport], root: &Path) -> String {
    let count = |v: Verdict| reports.iter().filter(|r| r.verdict == v).count();
    let (pass, fail, err) = (count(Verdict::Pass), count(Verdict::Fail), count(Verdict::Error));
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>harness: {fail} failed, {err} errors, {pass} passed</title><style>{STYLE}</style></head><body><main>"#
    );
    let _ = write!(
        o,
        r#"<header><h1>harness report</h1><p class="counts"><span class="badge fail">{fail} failed</span> <span class="badge error">{err} {}</span> <span class="badge pass">{pass} passed</span> &nbsp;of {} trials</p></header>"#,
        if err == 1 { "error" } else { "errors" },
        reports.len()
    );
    summary_table(&mut o, reports, root);
    // Cases with a trial that did not pass, in report order; every engine of the case is plotted.
    let mut cases: Vec<&str> = Vec::new();
    for r in reports.iter().filter(|r| r.verdict != Verdict::Pass) {
        if !cases.contains(&r.case.as_str()) {
            cases.push(&r.case);
        }
    }
    for case in cases {
        let trials: Vec<&TrialReport> = reports.iter().filter(|r| r.case == case).collect();
        case_section(&mut o, case, &trials, root);
    }
    let _ = write!(
        o,
        r#"<footer>harness {} · the same data is in report.json (schema version {}) and junit.xml beside this file</footer></main></body></html>"#,
        env!("CARGO_PKG_VERSION"),
        super::json::SCHEMA_VERSION
    );
    o.push('\n');
    o
}
