//! The evaluation report: one self-contained `index.html` (inline CSS, no scripts or fonts from
//! elsewhere) with the metrics tables and the plots, which sit next to it under `plots/` as PNG
//! (shown) and SVG (linked). It opens offline from the file system.
//!
//! A small inline script marks `<body data-images="loaded/total">` once the page has loaded, so
//! a headless browser can check that every image decodes (`scripts/check_report.sh`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::plots::PlotFiles;
use super::wer::Score;

/// Subdirectory of the report directory that holds the plot files.
pub const PLOTS_DIR: &str = "plots";

/// Where plot functions should write for a report in `report_dir`.
pub fn plots_dir(report_dir: &Path) -> PathBuf {
    report_dir.join(PLOTS_DIR)
}

/// Everything the report shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportData {
    pub title: String,
    /// Key facts shown at the top (model, dataset, split, normaliser, run time...).
    pub facts: Vec<(String, String)>,
    /// Free-text paragraphs (plain text; escaped).
    pub notes: Vec<String>,
    /// One entry per system, in display order (base, dense, mixture, oracle...).
    pub systems: Vec<SystemResult>,
    pub routing: Option<RoutingSummary>,
    /// Paired bootstrap comparisons of systems.
    #[serde(default)]
    pub comparisons: Vec<crate::eval::bootstrap::Comparison>,
    /// Plots under `plots/`, shown in this order.
    pub plots: Vec<ReportPlot>,
}

/// Scores of one system on the evaluated split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemResult {
    pub name: String,
    pub utterances: u64,
    pub overall: Score,
    /// Grouping column (e.g. "cluster", "domain") → group value → summed scores.
    pub groups: BTreeMap<String, BTreeMap<String, Score>>,
}

/// How the gate routed the evaluated utterances.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoutingSummary {
    /// Utterances whose top-1 expert is the expert of their cluster.
    pub correct: u64,
    pub total: u64,
    /// e.g. cluster vs expert, domain vs expert.
    pub confusions: Vec<Confusion>,
}

impl RoutingSummary {
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 { f64::NAN } else { self.correct as f64 / self.total as f64 }
    }
}

/// Counts of a label column (rows) against the chosen expert (columns).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Confusion {
    pub label_column: String,
    pub labels: Vec<String>,
    pub experts: Vec<String>,
    /// `counts[label][expert]`
    pub counts: Vec<Vec<u64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportPlot {
    pub files: PlotFiles,
    pub caption: String,
}

/// Escape text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A file name as a relative URL: each path segment percent-encoded except unreserved chars.
fn url(rel: &str) -> String {
    let mut out = String::new();
    for b in rel.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(b as char),
            _ => write!(out, "%{b:02X}").unwrap(),
        }
    }
    out
}

fn pct(v: f64) -> String {
    if v.is_finite() { format!("{:.2}", v * 100.0) } else { "–".into() }
}

const CSS: &str = r#"
body { font-family: system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f2f4f7; } td.name, th.name { text-align: left; }
td.best { font-weight: bold; background: #e6f4ea; }
table.facts td, table.facts th { text-align: left; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 1.2em; }
figure { margin: 0; border: 1px solid #e3e3e3; padding: 0.5em; background: #fff; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 0.9em; color: #555; margin-top: 0.3em; }
p.note { background: #fafafa; border-left: 3px solid #9ab; padding: 0.4em 0.8em; white-space: pre-wrap; }
.muted { color: #777; }
"#;

/// Marks `<body data-images="loaded/total">` after load: a headless browser reads it back.
const IMAGE_CHECK: &str = r#"
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
"#;

/// Render the page. File references are relative (`plots/<file>`).
pub fn render_html(data: &ReportData) -> String {
    let mut h = String::new();
    let title = if data.title.is_empty() { "Evaluation report" } else { data.title.as_str() };
    writeln!(h, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">").unwrap();
    writeln!(h, "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">").unwrap();
    writeln!(h, "<title>{}</title>\n<style>{CSS}</style>\n<script>{IMAGE_CHECK}</script>", escape(title)).unwrap();
    writeln!(h, "</head>\n<body data-images=\"pending\">\n<h1>{}</h1>", escape(title)).unwrap();

    if !data.facts.is_empty() {
        h.push_str("<table class=\"facts\">\n");
        for (k, v) in &data.facts {
            writeln!(h, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v)).unwrap();
        }
        h.push_str("</table>\n");
    }
    for n in &data.notes {
        writeln!(h, "<p class=\"note\">{}</p>", escape(n)).unwrap();
    }

    overall_table(&mut h, &data.systems);
    comparison_table(&mut h, &data.comparisons);
    group_tables(&mut h, &data.systems);
    if let Some(r) = &data.routing {
        routing_section(&mut h, r);
    }
    if !data.plots.is_empty() {
        h.push_str("<h2>Plots</h2>\n<div class=\"figures\">\n");
        for p in &data.plots {
            let png = url(&format!("{PLOTS_DIR}/{}", p.files.png));
            let svg = url(&format!("{PLOTS_DIR}/{}", p.files.svg));
            let cap = escape(&p.caption);
            writeln!(
                h,
                "<figure id=\"plot-{}\"><a href=\"{svg}\"><img src=\"{png}\" alt=\"{cap}\"></a>\
                 <figcaption>{cap} · <a href=\"{png}\">PNG</a> · <a href=\"{svg}\">SVG</a></figcaption></figure>",
                escape(&p.files.name)
            )
            .unwrap();
        }
        h.push_str("</div>\n");
    }
    h.push_str("</body>\n</html>\n");
    h
}

fn comparison_table(h: &mut String, comparisons: &[crate::eval::bootstrap::Comparison]) {
    let Some(first) = comparisons.first() else { return };
    let d = &first.difference;
    writeln!(
        h,
        "<h2 id=\"comparisons\">Is the difference real?</h2>\n<p class=\"note\">Paired bootstrap over utterances \
         ({} draws): WER(A) − WER(B) in points with its {:.0}% interval; <b>bold</b> where the interval \
         excludes zero. \u{201c}A better\u{201d} is the share of draws where A's WER is lower.</p>",
        d.resamples,
        100.0 * d.confidence
    )
    .unwrap();
    h.push_str(
        "<table>\n<tr><th class=\"name\">A − B</th><th class=\"name\">set</th><th class=\"name\">utterances</th>\
         <th>WER A %</th><th>WER B %</th><th>difference</th><th>interval</th><th>A better</th></tr>\n",
    );
    for c in comparisons {
        let d = &c.difference;
        let diff = format!("{:+.2}", 100.0 * d.delta);
        let diff = if d.significant() { format!("<b>{diff}</b>") } else { diff };
        let set = match &c.group {
            Some(g) => format!("{} ({g})", c.split),
            None => c.split.clone(),
        };
        writeln!(
            h,
            "<tr><td class=\"name\">{} − {}</td><td class=\"name\">{}</td><td class=\"name\">{}</td><td>{}</td>\
             <td>{}</td><td>{diff}</td><td>[{:+.2}, {:+.2}]</td><td>{:.2}</td></tr>",
            escape(&c.a),
            escape(&c.b),
            escape(&set),
            d.utterances,
            pct(d.wer_a),
            pct(d.wer_b),
            100.0 * d.low,
            100.0 * d.high,
            d.a_better
        )
        .unwrap();
    }
    h.push_str("</table>\n");
}

fn overall_table(h: &mut String, systems: &[SystemResult]) {
    h.push_str("<h2>Word and character error rates</h2>\n");
    if systems.is_empty() {
        h.push_str("<p class=\"muted\">No systems were evaluated.</p>\n");
        return;
    }
    let best = systems.iter().map(|s| s.overall.wer()).filter(|v| v.is_finite()).fold(f64::INFINITY, f64::min);
    h.push_str(
        "<table>\n<tr><th class=\"name\">system</th><th>utterances</th><th>words</th><th>WER %</th>\
         <th>substitutions</th><th>deletions</th><th>insertions</th><th>characters</th><th>CER %</th></tr>\n",
    );
    for s in systems {
        let w = &s.overall.words;
        let class = if s.overall.wer() == best { " class=\"best\"" } else { "" };
        writeln!(
            h,
            "<tr><td class=\"name\">{}</td><td>{}</td><td>{}</td><td{class}>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&s.name),
            s.utterances,
            w.words,
            pct(s.overall.wer()),
            w.substitutions,
            w.deletions,
            w.insertions,
            s.overall.chars.words,
            pct(s.overall.cer())
        )
        .unwrap();
    }
    h.push_str("</table>\n");
}

fn group_tables(h: &mut String, systems: &[SystemResult]) {
    let columns: BTreeSet<&String> = systems.iter().flat_map(|s| s.groups.keys()).collect();
    for col in columns {
        writeln!(h, "<h2>By {}</h2>", escape(col)).unwrap();
        let values: BTreeSet<&String> =
            systems.iter().filter_map(|s| s.groups.get(col)).flat_map(|g| g.keys()).collect();
        h.push_str("<table>\n<tr><th class=\"name\">");
        h.push_str(&escape(col));
        h.push_str("</th><th>words</th>");
        for s in systems {
            write!(h, "<th>{} WER %</th>", escape(&s.name)).unwrap();
        }
        for s in systems {
            write!(h, "<th>{} CER %</th>", escape(&s.name)).unwrap();
        }
        h.push_str("</tr>\n");
        for v in values {
            let scores: Vec<Option<&Score>> =
                systems.iter().map(|s| s.groups.get(col).and_then(|g| g.get(v))).collect();
            let words = scores.iter().flatten().map(|s| s.words.words).max().unwrap_or(0);
            let best = scores.iter().flatten().map(|s| s.wer()).filter(|v| v.is_finite()).fold(f64::INFINITY, f64::min);
            write!(h, "<tr><td class=\"name\">{}</td><td>{words}</td>", escape(v)).unwrap();
            for s in &scores {
                match s {
                    Some(s) => {
                        let class = if s.wer() == best { " class=\"best\"" } else { "" };
                        write!(h, "<td{class}>{}</td>", pct(s.wer())).unwrap();
                    }
                    None => h.push_str("<td>–</td>"),
                }
            }
            for s in &scores {
                write!(h, "<td>{}</td>", s.map_or("–".to_string(), |s| pct(s.cer()))).unwrap();
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table>\n");
    }
}

fn routing_section(h: &mut String, r: &RoutingSummary) {
    h.push_str("<h2>Routing</h2>\n");
    writeln!(
        h,
        "<p>Routing accuracy (top-1 expert is the expert of the utterance's cluster): <b>{} %</b> ({} of {}).</p>",
        pct(r.accuracy()),
        r.correct,
        r.total
    )
    .unwrap();
    for c in &r.confusions {
        writeln!(h, "<h3>{} versus chosen expert</h3>", escape(&c.label_column)).unwrap();
        h.push_str("<table>\n<tr><th class=\"name\">");
        h.push_str(&escape(&c.label_column));
        h.push_str("</th>");
        for e in &c.experts {
            write!(h, "<th>{}</th>", escape(e)).unwrap();
        }
        h.push_str("<th>total</th></tr>\n");
        for (label, row) in c.labels.iter().zip(&c.counts) {
            let total: u64 = row.iter().sum();
            write!(h, "<tr><td class=\"name\">{}</td>", escape(label)).unwrap();
            for &n in row {
                // shade by the share of the row, as the heatmap does
                let share = if total > 0 { n as f64 / total as f64 } else { 0.0 };
                let alpha = (share * 0.6 * 100.0).round() / 100.0;
                write!(h, "<td style=\"background: rgba(33, 113, 181, {alpha})\">{n}</td>").unwrap();
            }
            writeln!(h, "<td>{total}</td></tr>").unwrap();
        }
        h.push_str("</table>\n");
    }
}

/// Relative file references (`src` and `href` values) of a rendered page.
pub fn references(html: &str) -> Vec<String> {
    let mut refs = vec![];
    for attr in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            let end = rest.find('"').unwrap_or(rest.len());
            refs.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    refs
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        if b[i] == b'%'
            && let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Write `<report_dir>/index.html`. Every plot file must already exist under `plots/`.
pub fn write_report(report_dir: &Path, data: &ReportData) -> Result<PathBuf> {
    let html = render_html(data);
    for r in references(&html) {
        if r.starts_with('#') {
            continue;
        }
        if r.contains("://") || r.starts_with('/') || r.split('/').any(|seg| seg == "..") {
            bail!("the report would reference {r:?}, which is not a file beside it");
        }
        let path = report_dir.join(percent_decode(&r));
        if !path.is_file() {
            bail!("the report references {}, which does not exist", path.display());
        }
    }
    std::fs::create_dir_all(report_dir).with_context(|| format!("creating {}", report_dir.display()))?;
    let out = report_dir.join("index.html");
    let tmp = report_dir.join("index.html.tmp");
    std::fs::write(&tmp, html).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::Normalizer;
    use crate::eval::plots::{self, Series};
    use crate::eval::wer::{Score, by_group, score};

    /// A report over made-up transcripts with every kind of plot; kept in
    /// $WHISPER_MOE_KEEP_REPORT when set (for scripts/check_report.sh), else in a temp dir.
    fn synthetic_report() -> (PathBuf, ReportData) {
        let dir = match std::env::var_os("WHISPER_MOE_KEEP_REPORT") {
            Some(d) => PathBuf::from(d),
            None => std::env::temp_dir().join(format!("whisper-moe-report-{}", std::process::id())),
        };
        let _ = std::fs::remove_dir_all(&dir);
        let pd = plots_dir(&dir);
        let experts: Vec<String> = (0..3).map(|e| format!("expert {e}")).collect();
        let domains = ["news", "phone <call>", "read & spoken"];
        let refs = ["the cat sat on the mat", "call me back at five", "it's a lovely day today", "see you later"];
        let hyps = [
            ["the cat sat on a mat", "call me back at five", "its a lovely day", "see you later"],
            ["the cat sat on the mat", "call me back five", "it's a lovely day today", "see ya later"],
        ];
        let mut systems = vec![];
        for (k, name) in ["base", "mixture <top-1>"].iter().enumerate() {
            let items: Vec<(String, Score)> = (0..12)
                .map(|i| (domains[i % 3].to_string(), score(Normalizer::Basic, refs[i % 4], hyps[k][i % 4])))
                .collect();
            let overall = items.iter().map(|x| x.1).sum();
            let clusters = by_group(items.iter().enumerate().map(|(i, x)| (format!("cluster {}", i % 3), x.1)));
            systems.push(SystemResult {
                name: name.to_string(),
                utterances: items.len() as u64,
                overall,
                groups: [("domain".to_string(), by_group(items)), ("cluster".to_string(), clusters)].into(),
            });
        }
        let steps: Vec<f64> = (0..40).map(|s| s as f64 * 5.0).collect();
        let wer: Vec<Vec<f64>> =
            systems.iter().map(|s| domains.iter().map(|d| s.groups["domain"][*d].wer()).collect()).collect();
        let counts = vec![vec![3, 1, 0], vec![0, 4, 0], vec![1, 0, 3]];
        let probs: Vec<Vec<f64>> =
            (0..30).map(|i| (0..3).map(|e| if e == i % 3 { 0.7 } else { 0.15 }).collect()).collect();
        let p = |f: Result<plots::PlotFiles>, caption: &str| ReportPlot { files: f.unwrap(), caption: caption.into() };
        let plots = vec![
            p(
                plots::loss_curves(
                    &pd,
                    "loss",
                    "Loss",
                    &[Series::new("main", steps.iter().map(|&s| (s, 2.0 / (1.0 + s / 50.0))))],
                ),
                "Training loss",
            ),
            p(
                plots::temperature_phases(
                    &pd,
                    "temperature",
                    "Temperature",
                    &steps,
                    &steps.iter().map(|s| 2.0 - s / 130.0).collect::<Vec<_>>(),
                    &steps
                        .iter()
                        .map(|&s| if s < 100.0 { "soft" } else { "topk_hard" }.to_string())
                        .collect::<Vec<_>>(),
                ),
                "Temperature & phases",
            ),
            p(
                plots::routing_entropy(
                    &pd,
                    "entropy",
                    "Routing entropy",
                    &[Series::new("entropy", steps.iter().map(|&s| (s, 1.0 - s / 400.0)))],
                    3,
                ),
                "Routing entropy",
            ),
            p(
                plots::expert_load_over_time(
                    &pd,
                    "load over time",
                    "Expert load",
                    &steps,
                    &steps.iter().map(|_| vec![0.3, 0.3, 0.4]).collect::<Vec<_>>(),
                    &experts,
                ),
                "Expert load over time",
            ),
            p(plots::expert_load_bars(&pd, "load", "Expert load", &[0.3, 0.3, 0.4], &experts), "Load vs uniform"),
            p(plots::gate_heatmap(&pd, "gate", "Gate probabilities (val)", &probs, &experts), "Gate probabilities"),
            p(
                plots::confusion_heatmap(
                    &pd,
                    "confusion",
                    "Domain vs expert",
                    &domains.map(String::from),
                    &experts,
                    &counts,
                ),
                "Domain vs chosen expert",
            ),
            p(
                plots::wer_by_group(
                    &pd,
                    "wer",
                    "WER per domain",
                    &systems.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
                    &domains.map(String::from),
                    &wer,
                ),
                "WER per system and domain",
            ),
        ];
        let data = ReportData {
            title: "Synthetic report <test>".into(),
            facts: vec![("split".into(), "test".into()), ("normaliser".into(), "basic".into())],
            notes: vec!["Made-up numbers & <markup> that must be escaped.".into()],
            systems,
            routing: Some(RoutingSummary {
                correct: 10,
                total: 12,
                confusions: vec![Confusion {
                    label_column: "domain".into(),
                    labels: domains.map(String::from).to_vec(),
                    experts: experts.clone(),
                    counts,
                }],
            }),
            comparisons: vec![crate::eval::bootstrap::Comparison {
                a: "mixture <top-1>".into(),
                b: "base".into(),
                split: "test".into(),
                group: Some("voice_group=new".into()),
                difference: crate::eval::bootstrap::Difference {
                    wer_a: 0.1,
                    wer_b: 0.25,
                    delta: -0.15,
                    low: -0.2,
                    high: -0.1,
                    a_better: 1.0,
                    utterances: 12,
                    resamples: 1000,
                    confidence: 0.95,
                },
            }],
            plots,
        };
        (dir, data)
    }

    #[test]
    fn synthetic_report_references_only_existing_files() {
        let (dir, data) = synthetic_report();
        let index = write_report(&dir, &data).unwrap();
        let html = std::fs::read_to_string(&index).unwrap();
        let refs = references(&html);
        assert_eq!(refs.iter().filter(|r| r.ends_with(".png")).count(), 2 * data.plots.len());
        for r in &refs {
            assert!(!r.contains("://"), "external reference {r}");
            assert!(dir.join(percent_decode(r)).is_file(), "{r} is missing");
        }
        assert!(html.contains("load%20over%20time.png"));
        // escaped, never raw markup from the data
        assert!(html.contains("mixture &lt;top-1&gt;") && !html.contains("<top-1>"));
        assert!(html.contains("phone &lt;call&gt;") && html.contains("read &amp; spoken"));
        assert!(html.contains("Synthetic report &lt;test&gt;"));
        assert!(html.contains("83.33 %"), "routing accuracy 10/12");
        // the comparison: escaped names, the difference in bold (its interval excludes zero)
        assert!(html.contains("mixture &lt;top-1&gt; − base</td><td class=\"name\">test (voice_group=new)"), "{html}");
        assert!(html.contains("<b>-15.00</b>") && html.contains("[-20.00, -10.00]"));
        if std::env::var_os("WHISPER_MOE_KEEP_REPORT").is_none() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn missing_plot_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("whisper-moe-report-missing-{}", std::process::id()));
        let data = ReportData {
            plots: vec![ReportPlot {
                files: PlotFiles { name: "x".into(), png: "x.png".into(), svg: "x.svg".into() },
                caption: "x".into(),
            }],
            ..ReportData::default()
        };
        let err = write_report(&dir, &data).unwrap_err().to_string();
        assert!(err.contains("x.png"), "{err}");
    }

    #[test]
    fn escapes_and_urls() {
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(url("plots/a b&c.png"), "plots/a%20b%26c.png");
        assert_eq!(percent_decode("plots/a%20b%26c.png"), "plots/a b&c.png");
    }
}
