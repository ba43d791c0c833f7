//! Report files of a failing run: report.json, junit.xml and index.html, and the HTML drawn by
//! a real browser (headless Chromium) so the plots are known to render.

mod common;

use common::skip::{Outcome, Skip};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TempRepo;
use harness::engines::reference::{Mutation, ReferenceEngine};
use harness::report::{TrialReport, Verdict};

/// llama/mha on the reference engine and on a mutant with one weight of layer 1's up_proj
/// perturbed: the error starts at `model.layers.1.mlp.up_proj`.
fn mutant_run() -> (TempRepo, Vec<TrialReport>) {
    let repo = TempRepo::with_cases(&["llama/mha"]);
    let mutant: Arc<dyn harness::engine::Engine> = Arc::new(ReferenceEngine::mutant(
        "perturbed",
        Mutation::PerturbWeight { name: "model.layers.1.mlp.up_proj.weight".into(), index: 5, delta: 0.5 },
    ));
    let reference = repo.run("llama/mha", "reference", vec![]);
    let perturbed = repo.run("llama/mha", "perturbed", vec![mutant]);
    assert_eq!(perturbed.verdict, Verdict::Fail);
    (repo, vec![perturbed, reference])
}

fn failing_trial_carries_per_token_detail_and_passing_one_does_not() -> Outcome {
    let (_repo, reports) = mutant_run();
    let (bad, good) = (&reports[0], &reports[1]);
    let t = bad.first_divergent_tap().unwrap();
    assert_eq!(t.name, "model.layers.1.mlp.up_proj");
    let rows = t.row_max_abs.as_ref().expect("token tap of a failing trial has per-row errors");
    assert_eq!(rows.len(), 12);
    // The per-row maximum agrees with the tap's max_abs and its position.
    let m = t.metrics.as_ref().unwrap();
    let worst = rows.iter().copied().fold(0f32, f32::max);
    assert!((worst as f64 - m.max_abs).abs() < 1e-6, "{worst} vs {}", m.max_abs);
    let at = t.max_abs_index.as_ref().unwrap();
    assert_eq!(rows[at[1]], worst);
    // Taps before the first divergence are within atol on every token.
    let i = bad.first_divergence.unwrap();
    assert!(bad.taps[..i].iter().filter_map(|t| t.row_max_abs.as_ref()).flatten().all(|&x| x < 1e-4));
    assert!(t.sqnr_db_at_tolerance.is_some_and(|db| db.is_finite()));
    assert!(good.taps.iter().all(|t| t.row_max_abs.is_none() && t.sqnr_db_at_tolerance.is_none()));
    Ok(())
}

fn report_files_hold_every_trial_tap_and_metric() -> Outcome {
    let (repo, reports) = mutant_run();
    let out = repo.path("out");
    let files = harness::report::write_reports(&out, repo.root(), &reports).unwrap();
    assert_eq!(files.len(), 3);
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["schema_version"], 1);
    assert_eq!(json["summary"]["fail"], 1);
    let bad = &json["trials"][0];
    assert_eq!(bad["trial"], "perturbed::llama/mha");
    assert_eq!(bad["case_file"], "cases/llama/mha.yaml");
    assert_eq!(bad["first_divergent_tap"], "model.layers.1.mlp.up_proj");
    assert_eq!(bad["taps"].as_array().unwrap().len(), reports[0].taps.len());
    let tap = &bad["taps"][bad["first_divergence"].as_u64().unwrap() as usize];
    assert_eq!(tap["status"], "fail");
    assert_eq!(tap["failures"][0]["criterion"], "allclose");
    for k in ["max_abs", "mean_abs", "max_rel", "cosine", "nmse", "sqnr_db", "norm_ratio", "mismatches", "n"] {
        assert!(tap["metrics"][k].is_number(), "{k}: {}", tap["metrics"][k]);
    }
    // An exact tap has infinite SQNR: written as "inf", never as null.
    let exact = json["trials"][1]["taps"].as_array().unwrap().iter().find(|t| t["metrics"]["max_abs"] == 0.0).unwrap();
    assert_eq!(exact["metrics"]["sqnr_db"], "inf");

    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(junit.contains(r#"<testsuites name="harness" tests="2" failures="1" errors="0">"#), "{junit}");
    assert!(junit.contains(r#"<failure message="first divergence: model.layers.1.mlp.up_proj: "#), "{junit}");
    assert!(
        junit.contains(r#"<testcase name="reference::llama/mha" classname="reference" file="cases/llama/mha.yaml"/>"#)
    );
    Ok(())
}

/// `HARNESS_REPORT` under `cargo test`: the case runner writes the files at the end of its run.
fn case_runner_writes_reports_when_asked_by_env() -> Outcome {
    let repo = TempRepo::with_cases(&["llama/mha"]);
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(common::harness_bin())
        .args(["run", "--exact", "reference::llama/mha"])
        .env("HARNESS_ROOT", repo.root())
        .env("HARNESS_REPORT", out.path())
        .env("GITHUB_ACTIONS", "false")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    for f in ["report.json", "junit.xml", "index.html"] {
        assert!(out.path().join(f).is_file(), "{f} not written");
    }
    Ok(())
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| {
        std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
    })
}

/// Run Chromium headless with the flags that work in containers; killed after 60 s. Output goes
/// to files (a pipe nobody reads would block a large `--dump-dom`). Returns stdout.
fn run_chromium(bin: &Path, profile: &Path, extra: &[String], url: &str) -> String {
    let out = profile.join("stdout.txt");
    let err = profile.join("stderr.txt");
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.join("profile").display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("chromium starts");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 60 s: {}", std::fs::read_to_string(&err).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(&out).unwrap_or_default()
}

fn html_report_renders_in_headless_chromium() -> Outcome {
    let Some(bin) = chromium() else {
        return Err(Skip("chromium is not installed (hint: apt-get install -y chromium; .ci/run installs it)".into()));
    };
    let (repo, reports) = mutant_run();
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("html-report");
    let _ = std::fs::remove_dir_all(&out);
    harness::report::write_reports(&out, repo.root(), &reports).unwrap();
    let html = out.join("index.html");
    let url = format!("file://{}", html.display());

    // 1. The browser builds the SVG elements: a probe copy of the page counts them after layout.
    let probe = out.join("probe.html");
    let text = std::fs::read_to_string(&html).unwrap();
    let script = r#"<script>
const q = s => document.querySelectorAll(s);
const box = s => Array.from(q(s)).every(e => { const b = e.getBBox(); return b.width > 0 && b.height > 0; });
document.body.setAttribute('data-probe', [q('svg.tap-plot').length, q('svg.tap-plot g.series path.line').length,
  q('svg.tap-plot circle.point').length, q('svg.tap-plot circle.point.fail').length, q('svg.tap-plot path.tolerance').length,
  q('svg.heatmap rect').length, q('svg.tap-plot line.first-divergence').length, box('svg.tap-plot path.line')].join(','));
</script></body>"#;
    std::fs::write(&probe, text.replace("</body>", script)).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let dom = run_chromium(&bin, profile.path(), &["--dump-dom".into()], &format!("file://{}", probe.display()));
    let probe = dom.split("data-probe=\"").nth(1).and_then(|s| s.split('"').next()).expect("probe ran");
    let v: Vec<&str> = probe.split(',').collect();
    let taps = reports[0].taps.len();
    assert_eq!(v[0], "1", "one plot for the case: {probe}");
    assert_eq!(v[1], "2", "one line per engine: {probe}");
    assert_eq!(v[2].parse::<usize>().unwrap(), 2 * taps, "a point per tap and engine: {probe}");
    let failing = reports[0].taps.iter().filter(|t| !t.status.is_pass()).count();
    assert_eq!(v[3].parse::<usize>().unwrap(), failing, "failing taps are marked: {probe}");
    assert_eq!(v[4], "1", "tolerance line: {probe}");
    assert!(v[5].parse::<usize>().unwrap() >= 12 * 3, "heat map cells: {probe}");
    assert_eq!(v[6], "1", "first divergence marked: {probe}");
    assert_eq!(v[7], "true", "lines have a non-empty box: {probe}");

    // 2. The screenshot is not blank: many colors, and the failure red is on it.
    let png_path = out.join("screenshot.png");
    let profile = tempfile::tempdir().unwrap();
    run_chromium(
        &bin,
        profile.path(),
        &[format!("--screenshot={}", png_path.display()), "--window-size=1280,1500".into()],
        &url,
    );
    assert!(
        png_path.is_file(),
        "no screenshot: {}",
        std::fs::read_to_string(profile.path().join("stderr.txt")).unwrap_or_default()
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png_path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    let non_white = pixels.iter().filter(|p| p[..3].iter().any(|&c| c < 235)).count();
    let colors: std::collections::HashSet<&[u8]> = pixels.iter().copied().collect();
    let red = pixels.iter().filter(|p| p[0] > 200 && p[1] < 80 && p[2] < 80).count();
    eprintln!("screenshot {}: {} px non-white, {} colors, {} red px", png_path.display(), non_white, colors.len(), red);
    assert!(non_white > pixels.len() / 20, "screenshot is nearly blank");
    assert!(colors.len() > 50, "screenshot has only {} colors", colors.len());
    assert!(red > 200, "no failure red on the screenshot");
    Ok(())
}

fn write_sample_report() -> Outcome {
    let repo = TempRepo::with_cases(&["llama/mha", "llama/padded-batch", "llama/gqa"]);
    let mutant = |name: &str, weight: &str| -> Arc<dyn harness::engine::Engine> {
        Arc::new(ReferenceEngine::mutant(name, Mutation::PerturbWeight { name: weight.into(), index: 5, delta: 0.5 }))
    };
    let mut reports = vec![
        repo.run("llama/mha", "reference", vec![]),
        repo.run("llama/mha", "perturbed", vec![mutant("perturbed", "model.layers.1.mlp.up_proj.weight")]),
        repo.run("llama/padded-batch", "reference", vec![]),
        repo.run("llama/padded-batch", "v-proj", vec![mutant("v-proj", "model.layers.0.self_attn.v_proj.weight")]),
    ];
    let gqa = repo.path("cases/llama/gqa.yaml");
    let text = std::fs::read_to_string(&gqa).unwrap().replace("[[1, 400,", "[[1, 401,");
    std::fs::write(&gqa, text).unwrap();
    reports.push(repo.run("llama/gqa", "reference", vec![]));
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sample-report");
    harness::report::write_reports(&out, repo.root(), &reports).unwrap();
    eprintln!("{}", out.join("index.html").display());
    Ok(())
}

/// A small hand-made report: one passing tap, one failing with per-token detail, one missing.
fn synthetic() -> Vec<TrialReport> {
    use harness::metrics::Metrics;
    use harness::report::{TapReport, TapStatus};
    use harness::tolerance::{Failure, Tolerance};
    let tap = |name: &str, status: TapStatus, metrics: Option<Metrics>| TapReport {
        name: name.into(),
        shape: vec![1, 3, 4],
        tolerance: Tolerance::default(),
        metrics,
        logits: None,
        noise_floor: None,
        max_abs_index: None,
        first_mismatch_index: None,
        status,
        row_max_abs: None,
        sqnr_db_at_tolerance: None,
        added: None,
    };
    let exact = Metrics { n: 12, cosine: 1.0, sqnr_db: f64::INFINITY, norm_ratio: 1.0, ..Default::default() };
    let bad = Metrics {
        n: 12,
        max_abs: 0.5,
        max_abs_at: Some(5),
        mean_abs: 0.125,
        max_rel: 2.0,
        cosine: 0.96875,
        nmse: 0.0625,
        sqnr_db: 12.041199826559248,
        norm_ratio: 1.0,
        mismatches: 3,
        first_mismatch_at: Some(4),
        ..Default::default()
    };
    let mut fail = tap(
        "model.layers.0.mlp",
        TapStatus::Fail { failures: vec![Failure::Allclose { mismatches: 3, allowed: 0, atol: 1e-4, rtol: 1e-3 }] },
        Some(bad),
    );
    fail.max_abs_index = Some(vec![0, 1, 1]);
    fail.first_mismatch_index = Some(vec![0, 1, 0]);
    fail.row_max_abs = Some(vec![0.0, 0.5, f32::NAN]);
    fail.sqnr_db_at_tolerance = Some(58.5);
    let root = Path::new("/repo");
    let failing = TrialReport {
        trial: "mutant::toy/case".into(),
        engine: "mutant".into(),
        case: "toy/case".into(),
        case_file: root.join("cases/toy/case.yaml"),
        verdict: Verdict::Fail,
        taps: vec![
            tap("model.embed_tokens", TapStatus::Pass, Some(exact)),
            fail,
            tap("logits", TapStatus::Missing, None),
        ],
        first_divergence: Some(1),
        hints: vec![],
        error: None,
        rerun: "cargo test -p harness --test cases -- --exact 'mutant::toy/case'".into(),
        notes: vec![],
        bisection: None,
        expected: None,
    };
    let error = TrialReport {
        trial: "reference::toy/stale".into(),
        engine: "reference".into(),
        case: "toy/stale".into(),
        case_file: root.join("cases/toy/stale.yaml"),
        verdict: Verdict::Error,
        taps: vec![],
        first_divergence: None,
        hints: vec![],
        error: Some("goldens/toy/stale/manifest.json: goldens are stale: the case file changed".into()),
        rerun: "cargo test -p harness --test cases -- --exact 'reference::toy/stale'".into(),
        notes: vec![],
        bisection: None,
        expected: None,
    };
    vec![failing, error]
}

fn json_schema_snapshot() -> Outcome {
    let json = harness::report::json::render(&synthetic(), Path::new("/repo"));
    let json = json.replace(env!("CARGO_PKG_VERSION"), "<version>");
    insta::assert_snapshot!("report_json", json);
    Ok(())
}

/// The element skeleton of the page (tags and classes, repeats collapsed), not coordinates.
fn skeleton(html: &str) -> String {
    let mut out: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let voids = ["meta", "br", "img", "input"];
    for piece in html.split('<').skip(1) {
        if piece.starts_with('/') {
            depth = depth.saturating_sub(1);
            continue;
        }
        let tag_end = piece.find([' ', '>', '/']).unwrap_or(piece.len());
        let tag = &piece[..tag_end];
        if tag.starts_with('!') || tag.is_empty() {
            continue;
        }
        let head = &piece[..piece.find('>').unwrap_or(piece.len())];
        let class = head
            .split("class=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .filter(|c| !c.is_empty())
            .map(|c| format!(".{}", c.replace(' ', ".")));
        let line = format!("{}{}{}", "  ".repeat(depth), tag, class.unwrap_or_default());
        match out.last_mut() {
            Some((l, n)) if *l == line => *n += 1,
            _ => out.push((line, 1)),
        }
        let self_closing = head.ends_with('/') || voids.contains(&tag);
        if !self_closing {
            depth += 1;
        }
    }
    out.iter().map(|(l, n)| if *n > 1 { format!("{l} ×{n}\n") } else { format!("{l}\n") }).collect()
}

fn html_structure_snapshot() -> Outcome {
    let html = harness::report::html::render(&synthetic(), Path::new("/repo"));
    insta::assert_snapshot!("index_html_skeleton", skeleton(&html));
    Ok(())
}

tests!(
    failing_trial_carries_per_token_detail_and_passing_one_does_not,
    report_files_hold_every_trial_tap_and_metric,
    case_runner_writes_reports_when_asked_by_env,
    html_report_renders_in_headless_chromium,
    #[ignore = "writes a sample report with several cases to target/tmp/sample-report for a look"]
    write_sample_report,
    json_schema_snapshot,
    html_structure_snapshot,
);
