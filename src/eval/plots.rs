//! Plots of training logs and evaluation results, drawn with plotters. Every function takes plain
//! data, writes `<dir>/<name>.png` and `<dir>/<name>.svg`, and returns their file names.
//!
//! Text is rendered with DejaVu Sans, embedded in the binary (`assets/fonts`, Bitstream Vera
//! licence), so no system font is needed. Non-finite values (NaN, ±inf) are skipped: a line
//! breaks there, a bar or cell is left out. Empty inputs draw an empty frame that says so.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};
use plotters::chart::MeshStyle;
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// The files one plot function wrote, relative to its directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlotFiles {
    pub name: String,
    pub png: String,
    pub svg: String,
}

/// A named line: (x, y) points, e.g. (step, loss).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: impl IntoIterator<Item = (f64, f64)>) -> Series {
        Series { name: name.into(), points: points.into_iter().collect() }
    }
}

/// Tableau's ten categorical colours.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Sequential white → dark blue scale for t in [0, 1] (ColorBrewer "Blues" end points).
fn heat(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] =
        [(247., 251., 255.), (198., 219., 239.), (107., 174., 214.), (33., 113., 181.), (8., 48., 107.)];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

fn register_font() -> Result<()> {
    static OK: OnceLock<bool> = OnceLock::new();
    if *OK.get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()) {
        Ok(())
    } else {
        bail!("the embedded font assets/fonts/DejaVuSans.ttf is not a valid TrueType font")
    }
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

type DrawResult<DB> = std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Draw the same picture into `<dir>/<name>.png` and `<dir>/<name>.svg`. The body is expanded
/// once per backend, so it may call generic drawing functions.
macro_rules! render {
    ($dir:expr, $name:expr, $size:expr, |$root:ident| $body:expr) => {{
        let (dir, name, size): (&Path, &str, (u32, u32)) = ($dir, $name, $size);
        register_font()?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let files = PlotFiles { name: name.to_string(), png: format!("{name}.png"), svg: format!("{name}.svg") };
        {
            let path = dir.join(&files.png);
            let $root = BitMapBackend::new(&path, size).into_drawing_area();
            $root.fill(&WHITE).map_err(plot_err)?;
            $body.map_err(plot_err).with_context(|| format!("drawing {}", path.display()))?;
            $root.present().map_err(plot_err).with_context(|| format!("writing {}", path.display()))?;
        }
        {
            let path = dir.join(&files.svg);
            let $root = SVGBackend::new(&path, size).into_drawing_area();
            $root.fill(&WHITE).map_err(plot_err)?;
            $body.map_err(plot_err).with_context(|| format!("drawing {}", path.display()))?;
            $root.present().map_err(plot_err).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(files)
    }};
}

fn font(size: u32) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font()).color(&BLACK)
}

/// The frame of every chart: title, margins and label areas (callers may override any).
fn frame<'a, 'b, DB: DrawingBackend>(root: &'a DrawingArea<DB, Shift>, title: &str) -> ChartBuilder<'a, 'b, DB> {
    let mut b = ChartBuilder::on(root);
    b.caption(title, font(22)).margin(12).x_label_area_size(45).y_label_area_size(70);
    b
}

/// The grid and label styles of every chart; callers add formatters and axis names.
fn mesh<'a, 'b, X, Y, DB>(chart: &'b mut ChartContext<'a, DB, Cartesian2d<X, Y>>) -> MeshStyle<'a, 'b, X, Y, DB>
where
    X: Ranged + ValueFormatter<X::ValueType>,
    Y: Ranged + ValueFormatter<Y::ValueType>,
    DB: DrawingBackend,
{
    let mut m = chart.configure_mesh();
    m.light_line_style(BLACK.mix(0.04))
        .bold_line_style(BLACK.mix(0.15))
        .label_style(font(14))
        .axis_desc_style(font(15));
    m
}

fn centered(size: u32) -> TextStyle<'static> {
    font(size).pos(Pos::new(HPos::Center, VPos::Center))
}

/// Axis numbers: integers without a decimal point, others with up to four decimals.
fn tick(v: &f64) -> String {
    let v = *v;
    if v == v.trunc() && v.abs() < 1e12 {
        format!("{v:.0}")
    } else if v != 0.0 && v.abs() < 1e-3 {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Smallest and largest finite value, widened when they coincide; (0, 1) when there is none.
fn span(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        (0.0, 1.0)
    } else if lo == hi {
        let d = if lo == 0.0 { 0.5 } else { lo.abs() * 0.1 };
        (lo - d, hi + d)
    } else {
        (lo, hi)
    }
}

fn padded((lo, hi): (f64, f64), frac: f64) -> std::ops::Range<f64> {
    let d = (hi - lo) * frac;
    (lo - d)..(hi + d)
}

/// Runs of consecutive finite points (a NaN breaks the line).
fn finite_runs(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut runs = vec![];
    let mut run = vec![];
    for &(x, y) in points {
        if x.is_finite() && y.is_finite() {
            run.push((x, y));
        } else if !run.is_empty() {
            runs.push(std::mem::take(&mut run));
        }
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// Category labels centred on 0, 1, 2, ... of an f64 axis.
fn category_label(names: &[String], x: f64) -> String {
    let i = x.round();
    if (x - i).abs() < 1e-6 && i >= 0.0 { names.get(i as usize).cloned().unwrap_or_default() } else { String::new() }
}

/// A categorical axis: category i is centred on x = i, with one tick per category.
struct Categories(usize);

impl Ranged for Categories {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let r = self.range();
        let t = (v - r.start) / (r.end - r.start);
        limit.0 + ((limit.1 - limit.0) as f64 * t).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() { vec![] } else { (0..self.0).map(|i| i as f64).collect() }
    }

    fn range(&self) -> std::ops::Range<f64> {
        -0.5..(self.0.max(1) as f64 - 0.5)
    }
}

fn categories(n: usize) -> Categories {
    Categories(n)
}

fn no_data<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str) -> DrawResult<DB> {
    let (w, h) = root.dim_in_pixel();
    root.draw(&Text::new(title.to_string(), (w as i32 / 2, 24), centered(20)))?;
    root.draw(&Text::new("no data".to_string(), (w as i32 / 2, h as i32 / 2), centered(16)))?;
    Ok(())
}

fn legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> DrawResult<DB> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font(font(14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.5))
        .draw()
}

/// Lines over x with optional horizontal reference lines, e.g. losses over steps.
fn draw_lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    reference_lines: &[(String, f64)],
) -> DrawResult<DB> {
    let all = || series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    if all().next().is_none() {
        return no_data(root, title);
    }
    let xs = span(all().map(|p| p.0));
    let ys = span(all().map(|p| p.1).chain(reference_lines.iter().map(|r| r.1)));
    let mut chart = frame(root, title).build_cartesian_2d(xs.0..xs.1, padded(ys, 0.05))?;
    mesh(&mut chart).x_label_formatter(&tick).y_label_formatter(&tick).x_desc(x_desc).y_desc(y_desc).draw()?;
    for (name, y) in reference_lines {
        let style = BLACK.mix(0.6).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(vec![(xs.0, *y), (xs.1, *y)], 6, 4, style))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    for (i, s) in series.iter().enumerate() {
        let style = color(i).stroke_width(2);
        chart
            .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        for run in finite_runs(&s.points) {
            if run.len() == 1 {
                chart.draw_series(run.iter().map(|p| Circle::new(*p, 3, color(i).filled())))?;
            } else {
                chart.draw_series(LineSeries::new(run, style))?;
            }
        }
    }
    if !series.is_empty() || !reference_lines.is_empty() {
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    }
    Ok(())
}

/// Any named series over a common x axis.
pub fn line_chart(
    dir: &Path,
    name: &str,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> Result<PlotFiles> {
    render!(dir, name, (900, 480), |root| draw_lines(&root, title, x_desc, y_desc, series, &[]))
}

/// Loss curves (main, balance, validation, ... one series each) over optimizer steps.
pub fn loss_curves(dir: &Path, name: &str, title: &str, series: &[Series]) -> Result<PlotFiles> {
    line_chart(dir, name, title, "step", "loss", series)
}

/// Routing entropy over steps, with the entropy of uniform routing, ln(num_experts), for scale.
pub fn routing_entropy(
    dir: &Path,
    name: &str,
    title: &str,
    series: &[Series],
    num_experts: usize,
) -> Result<PlotFiles> {
    let uniform: Vec<(String, f64)> =
        if num_experts >= 2 { vec![(format!("uniform, ln {num_experts}"), (num_experts as f64).ln())] } else { vec![] };
    render!(dir, name, (900, 480), |root| draw_lines(&root, title, "step", "entropy (nats)", series, &uniform))
}

/// Routing temperature over steps on top of background bands, one colour per training phase.
/// `phases[i]` is the phase at `steps[i]` (e.g. soft, topk_soft, topk_hard).
pub fn temperature_phases(
    dir: &Path,
    name: &str,
    title: &str,
    steps: &[f64],
    temperature: &[f64],
    phases: &[String],
) -> Result<PlotFiles> {
    if steps.len() != temperature.len() || steps.len() != phases.len() {
        bail!("temperature_phases: {} steps, {} temperatures, {} phases", steps.len(), temperature.len(), phases.len());
    }
    render!(dir, name, (900, 480), |root| draw_temperature_phases(&root, title, steps, temperature, phases))
}

fn draw_temperature_phases<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    steps: &[f64],
    temperature: &[f64],
    phases: &[String],
) -> DrawResult<DB> {
    let finite_steps: Vec<f64> = steps.iter().copied().filter(|s| s.is_finite()).collect();
    if finite_steps.is_empty() {
        return no_data(root, title);
    }
    let xs = span(finite_steps.iter().copied());
    let ys = span(temperature.iter().copied());
    let ys = (ys.0.min(0.0), ys.1);
    let mut chart =
        frame(root, title).build_cartesian_2d(xs.0..xs.1, padded(ys, 0.05).start.max(0.0)..padded(ys, 0.08).end)?;
    mesh(&mut chart).x_label_formatter(&tick).y_label_formatter(&tick).x_desc("step").y_desc("temperature").draw()?;

    // phase bands: a run of equal phases spans from its first step to the next run's first step
    let mut order: Vec<&str> = vec![];
    let mut runs: Vec<(usize, f64, f64)> = vec![];
    let idx: Vec<usize> = (0..steps.len()).filter(|&i| steps[i].is_finite()).collect();
    let mut k = 0;
    while k < idx.len() {
        let p = phases[idx[k]].as_str();
        let c = order.iter().position(|o| *o == p).unwrap_or_else(|| {
            order.push(p);
            order.len() - 1
        });
        let mut j = k;
        while j + 1 < idx.len() && phases[idx[j + 1]] == p {
            j += 1;
        }
        let end = if j + 1 < idx.len() { steps[idx[j + 1]] } else { xs.1 };
        runs.push((c, steps[idx[k]], end));
        k = j + 1;
    }
    let (y0, y1) = (chart.y_range().start, chart.y_range().end);
    for (c, a, b) in &runs {
        chart.draw_series(std::iter::once(Rectangle::new([(*a, y0), (*b, y1)], color(*c).mix(0.18).filled())))?;
    }
    for (c, p) in order.iter().enumerate() {
        let fill = color(c).mix(0.35).filled();
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
            .label(format!("phase {p}"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], fill));
    }
    let points: Vec<(f64, f64)> = steps.iter().copied().zip(temperature.iter().copied()).collect();
    let style = BLACK.stroke_width(2);
    chart
        .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())?
        .label("temperature")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    for run in finite_runs(&points) {
        chart.draw_series(LineSeries::new(run, style))?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// Expert load over steps as stacked areas: `load[t][e]` is expert e's share at `steps[t]`.
/// Steps with a non-finite share are left out.
pub fn expert_load_over_time(
    dir: &Path,
    name: &str,
    title: &str,
    steps: &[f64],
    load: &[Vec<f64>],
    experts: &[String],
) -> Result<PlotFiles> {
    if steps.len() != load.len() {
        bail!("expert_load_over_time: {} steps but {} load rows", steps.len(), load.len());
    }
    if let Some(row) = load.iter().find(|r| r.len() != experts.len()) {
        bail!("expert_load_over_time: a load row has {} values for {} experts", row.len(), experts.len());
    }
    render!(dir, name, (900, 480), |root| draw_stacked(&root, title, steps, load, experts))
}

fn draw_stacked<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    steps: &[f64],
    load: &[Vec<f64>],
    experts: &[String],
) -> DrawResult<DB> {
    let rows: Vec<(f64, &Vec<f64>)> = steps
        .iter()
        .zip(load)
        .filter(|(s, r)| s.is_finite() && r.iter().all(|v| v.is_finite()))
        .map(|(s, r)| (*s, r))
        .collect();
    if rows.is_empty() || experts.is_empty() {
        return no_data(root, title);
    }
    let xs = span(rows.iter().map(|r| r.0));
    let top = rows.iter().map(|(_, r)| r.iter().sum::<f64>()).fold(0.0, f64::max).max(1e-9);
    let mut chart = frame(root, title).right_y_label_area_size(0).build_cartesian_2d(xs.0..xs.1, 0.0..top * 1.02)?;
    mesh(&mut chart)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .x_desc("step")
        .y_desc("share of utterances")
        .draw()?;
    let mut lower: Vec<f64> = vec![0.0; rows.len()];
    for (e, expert) in experts.iter().enumerate() {
        let upper: Vec<f64> = rows.iter().zip(&lower).map(|((_, r), l)| l + r[e]).collect();
        let mut poly: Vec<(f64, f64)> = rows.iter().zip(&upper).map(|((s, _), u)| (*s, *u)).collect();
        poly.extend(rows.iter().zip(&lower).rev().map(|((s, _), l)| (*s, *l)));
        let fill = color(e).mix(0.85).filled();
        chart
            .draw_series(std::iter::once(Polygon::new(poly, fill)))?
            .label(expert.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], fill));
        lower = upper;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// Per-expert load as bars against the uniform share 1/E.
pub fn expert_load_bars(dir: &Path, name: &str, title: &str, load: &[f64], experts: &[String]) -> Result<PlotFiles> {
    if load.len() != experts.len() {
        bail!("expert_load_bars: {} values for {} experts", load.len(), experts.len());
    }
    let width = (200 + 60 * experts.len() as u32).clamp(600, 1400);
    render!(dir, name, (width, 440), |root| draw_load_bars(&root, title, load, experts))
}

fn draw_load_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    load: &[f64],
    experts: &[String],
) -> DrawResult<DB> {
    if experts.is_empty() {
        return no_data(root, title);
    }
    let n = experts.len();
    let uniform = 1.0 / n as f64;
    let top = load.iter().copied().filter(|v| v.is_finite()).fold(uniform, f64::max) * 1.15;
    let label = |x: &f64| category_label(experts, *x);
    let mut chart = frame(root, title).build_cartesian_2d(categories(n), 0.0..top)?;
    mesh(&mut chart)
        .disable_x_mesh()
        .x_label_formatter(&label)
        .y_label_formatter(&tick)
        .x_desc("expert")
        .y_desc("share of utterances")
        .draw()?;
    chart.draw_series(
        load.iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(e, v)| Rectangle::new([(e as f64 - 0.35, 0.0), (e as f64 + 0.35, *v)], color(e).filled())),
    )?;
    let style = RED.stroke_width(2);
    chart
        .draw_series(DashedLineSeries::new(vec![(-0.5, uniform), (n as f64 - 0.5, uniform)], 8, 5, style))?
        .label(format!("uniform 1/{n} = {uniform:.3}"))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// Gate probabilities of utterances (rows) over experts (columns), rows sorted by the chosen
/// (top-1) expert and, within an expert, by decreasing confidence. Rows with a non-finite
/// probability are dropped.
pub fn gate_heatmap(dir: &Path, name: &str, title: &str, probs: &[Vec<f64>], experts: &[String]) -> Result<PlotFiles> {
    if let Some(row) = probs.iter().find(|r| r.len() != experts.len()) {
        bail!("gate_heatmap: a row has {} probabilities for {} experts", row.len(), experts.len());
    }
    let width = (260 + 50 * experts.len() as u32).clamp(520, 1400);
    render!(dir, name, (width, 640), |root| draw_gate_heatmap(&root, title, probs, experts))
}

/// Row order for [`gate_heatmap`]: (chosen expert, row index) sorted by expert, then by
/// decreasing probability of that expert.
pub fn sort_by_chosen_expert(probs: &[Vec<f64>]) -> Vec<(usize, usize)> {
    let mut rows: Vec<(usize, usize, f64)> = probs
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.is_empty() && r.iter().all(|p| p.is_finite()))
        .map(|(i, r)| {
            let (e, p) =
                r.iter().enumerate().fold((0, f64::NEG_INFINITY), |b, (e, &p)| if p > b.1 { (e, p) } else { b });
            (e, i, p)
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0).then(b.2.total_cmp(&a.2)).then(a.1.cmp(&b.1)));
    rows.into_iter().map(|(e, i, _)| (e, i)).collect()
}

fn draw_gate_heatmap<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    probs: &[Vec<f64>],
    experts: &[String],
) -> DrawResult<DB> {
    let order = sort_by_chosen_expert(probs);
    if order.is_empty() || experts.is_empty() {
        return no_data(root, title);
    }
    // The title spans the whole width: over the heat map alone a long one would be cut off.
    let body = root.titled(title, font(22))?;
    let (w, _) = body.dim_in_pixel();
    let (main, bar) = body.split_horizontally(w as i32 - 110);
    let n = order.len() as f64;
    let label = |x: &f64| category_label(experts, *x);
    let mut chart = ChartBuilder::on(&main)
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(categories(experts.len()), 0.0..n)?;
    mesh(&mut chart)
        .disable_mesh()
        .x_label_formatter(&label)
        .y_labels(0)
        .x_desc("expert")
        .y_desc(format!("{} utterances, by chosen expert", order.len()))
        .draw()?;
    // row 0 at the top
    chart.draw_series(order.iter().enumerate().flat_map(|(row, &(_, i))| {
        let y = n - row as f64;
        probs[i]
            .iter()
            .enumerate()
            .map(move |(e, &p)| Rectangle::new([(e as f64 - 0.5, y - 1.0), (e as f64 + 0.5, y)], heat(p).filled()))
    }))?;
    // a line where the chosen expert changes
    let mut boundaries = vec![];
    for row in 1..order.len() {
        if order[row].0 != order[row - 1].0 {
            boundaries.push(n - row as f64);
        }
    }
    let last = experts.len() as f64 - 0.5;
    chart.draw_series(
        boundaries.into_iter().map(|y| PathElement::new(vec![(-0.5, y), (last, y)], RED.mix(0.8).stroke_width(1))),
    )?;
    color_bar(&bar, "probability", 0.0, 1.0)
}

fn color_bar<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, desc: &str, lo: f64, hi: f64) -> DrawResult<DB> {
    let mut chart = ChartBuilder::on(area)
        .margin_top(12)
        .margin_bottom(57)
        .margin_right(10)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..1.0, lo..hi)?;
    mesh(&mut chart)
        .disable_mesh()
        .x_labels(0)
        .y_label_formatter(&tick)
        .y_desc(desc)
        .label_style(font(11))
        .axis_desc_style(font(12))
        .draw()?;
    let steps = 64;
    chart.draw_series((0..steps).map(|k| {
        let a = lo + (hi - lo) * k as f64 / steps as f64;
        let b = lo + (hi - lo) * (k + 1) as f64 / steps as f64;
        Rectangle::new([(0.0, a), (1.0, b)], heat((k as f64 + 0.5) / steps as f64).filled())
    }))?;
    Ok(())
}

/// Counts of a label column (rows, e.g. domain) against the chosen expert (columns); cells are
/// coloured by the share of the row and print the count.
pub fn confusion_heatmap(
    dir: &Path,
    name: &str,
    title: &str,
    labels: &[String],
    experts: &[String],
    counts: &[Vec<u64>],
) -> Result<PlotFiles> {
    if counts.len() != labels.len() || counts.iter().any(|r| r.len() != experts.len()) {
        bail!("confusion_heatmap: counts must be {} rows of {} experts", labels.len(), experts.len());
    }
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0) as u32;
    let width = (160 + 8 * longest.min(30) + 70 * experts.len() as u32).clamp(480, 1600);
    let height = (150 + 42 * labels.len() as u32).clamp(300, 1400);
    render!(dir, name, (width, height), |root| draw_confusion(&root, title, labels, experts, counts, longest))
}

fn draw_confusion<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    labels: &[String],
    experts: &[String],
    counts: &[Vec<u64>],
    longest: u32,
) -> DrawResult<DB> {
    if labels.is_empty() || experts.is_empty() {
        return no_data(root, title);
    }
    let rows = labels.len();
    // label rows top to bottom: row r sits at y = rows - 1 - r
    let reversed: Vec<String> = labels.iter().rev().cloned().collect();
    let xl = |x: &f64| category_label(experts, *x);
    let yl = |y: &f64| category_label(&reversed, *y);
    let mut chart = frame(root, title)
        .y_label_area_size(30 + 8 * longest.min(30))
        .build_cartesian_2d(categories(experts.len()), categories(rows))?;
    mesh(&mut chart).disable_mesh().x_label_formatter(&xl).y_label_formatter(&yl).x_desc("chosen expert").draw()?;
    for (r, row) in counts.iter().enumerate() {
        let total: u64 = row.iter().sum();
        let y = (rows - 1 - r) as f64;
        for (e, &c) in row.iter().enumerate() {
            let share = if total > 0 { c as f64 / total as f64 } else { 0.0 };
            let x = e as f64;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                heat(share).filled(),
            )))?;
            let text = if share > 0.55 { centered(13).color(&WHITE) } else { centered(13) };
            chart.draw_series(std::iter::once(Text::new(c.to_string(), (x, y), text)))?;
        }
    }
    Ok(())
}

/// WER per group (x) for each system (bars side by side). `wer[s][g]` is a fraction (0.12 is
/// drawn as 12 %); non-finite values leave a gap.
pub fn wer_by_group(
    dir: &Path,
    name: &str,
    title: &str,
    systems: &[String],
    groups: &[String],
    wer: &[Vec<f64>],
) -> Result<PlotFiles> {
    if wer.len() != systems.len() || wer.iter().any(|r| r.len() != groups.len()) {
        bail!("wer_by_group: wer must be {} rows (systems) of {} groups", systems.len(), groups.len());
    }
    let width = (220 + (40 * systems.len().max(1) as u32 + 30) * groups.len() as u32).clamp(700, 1800);
    render!(dir, name, (width, 480), |root| draw_grouped_bars(&root, title, systems, groups, wer))
}

fn draw_grouped_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    systems: &[String],
    groups: &[String],
    wer: &[Vec<f64>],
) -> DrawResult<DB> {
    if systems.is_empty() || groups.is_empty() {
        return no_data(root, title);
    }
    let pct = |v: f64| v * 100.0;
    let top = wer.iter().flatten().copied().filter(|v| v.is_finite()).map(pct).fold(0.0, f64::max);
    let top = if top > 0.0 { top * 1.2 } else { 1.0 };
    let label = |x: &f64| category_label(groups, *x);
    let mut chart = frame(root, title).build_cartesian_2d(categories(groups.len()), 0.0..top)?;
    mesh(&mut chart).disable_x_mesh().x_label_formatter(&label).y_label_formatter(&tick).y_desc("WER (%)").draw()?;
    let width = 0.8 / systems.len() as f64;
    let annotate = systems.len() * groups.len() <= 48;
    for (s, system) in systems.iter().enumerate() {
        let fill = color(s).filled();
        let bars: Vec<(f64, f64)> = wer[s]
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(g, v)| (g as f64 - 0.4 + s as f64 * width, pct(*v)))
            .collect();
        chart
            .draw_series(bars.iter().map(|&(x, v)| Rectangle::new([(x, 0.0), (x + width * 0.92, v)], fill)))?
            .label(system.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], fill));
        if annotate {
            let text = font(10).pos(Pos::new(HPos::Center, VPos::Bottom));
            chart.draw_series(
                bars.iter()
                    .map(|&(x, v)| Text::new(format!("{v:.1}"), (x + width * 0.46, v + top * 0.01), text.clone())),
            )?;
        }
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Width and height from a PNG's IHDR chunk, after checking the signature.
    pub(crate) fn png_size(path: &Path) -> (u32, u32) {
        let b = std::fs::read(path).unwrap();
        assert!(b.len() > 33, "{} is too short", path.display());
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{} has no PNG signature", path.display());
        assert_eq!(&b[12..16], b"IHDR");
        let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        (be(16), be(20))
    }

    fn check(dir: &Path, f: &PlotFiles) {
        let (w, h) = png_size(&dir.join(&f.png));
        assert!(w >= 300 && h >= 200, "{}: {w}x{h}", f.png);
        let svg = std::fs::read_to_string(dir.join(&f.svg)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{} is not an SVG document", f.svg);
        assert!(svg.len() > 200);
    }

    fn names(n: usize, p: &str) -> Vec<String> {
        (0..n).map(|i| format!("{p}{i}")).collect()
    }

    #[test]
    fn every_plot_writes_png_and_svg() {
        let dir = tempdir("plots");
        let steps: Vec<f64> = (0..60).map(|i| i as f64 * 10.0).collect();
        let main = Series::new("main", steps.iter().map(|&s| (s, 3.0 * (-s / 300.0).exp() + 0.2)));
        let mut balance = Series::new("balance", steps.iter().map(|&s| (s, 0.1 + 0.05 * (s / 50.0).sin())));
        balance.points[10].1 = f64::NAN;
        let files = vec![
            loss_curves(&dir, "loss", "Training loss", &[main.clone(), balance]).unwrap(),
            routing_entropy(&dir, "entropy", "Routing entropy", &[Series::new("entropy", main.points.clone())], 4)
                .unwrap(),
            temperature_phases(
                &dir,
                "temperature",
                "Temperature and phase",
                &steps,
                &steps.iter().map(|s| 2.0 - 1.5 * (s / 590.0)).collect::<Vec<_>>(),
                &steps
                    .iter()
                    .map(|&s| {
                        if s < 200.0 {
                            "soft"
                        } else if s < 400.0 {
                            "topk_soft"
                        } else {
                            "topk_hard"
                        }
                        .to_string()
                    })
                    .collect::<Vec<_>>(),
            )
            .unwrap(),
            expert_load_over_time(
                &dir,
                "load_time",
                "Expert load",
                &steps,
                &steps.iter().map(|s| vec![0.25 + s / 2400.0, 0.25, 0.25, 0.25 - s / 2400.0]).collect::<Vec<_>>(),
                &names(4, "expert "),
            )
            .unwrap(),
            expert_load_bars(&dir, "load_bars", "Expert load", &[0.4, 0.3, 0.2, 0.1], &names(4, "e")).unwrap(),
            gate_heatmap(
                &dir,
                "gate",
                "Gate probabilities",
                &(0..50)
                    .map(|i| {
                        let e = i % 3;
                        (0..3).map(|k| if k == e { 0.8 } else { 0.1 }).collect()
                    })
                    .collect::<Vec<_>>(),
                &names(3, "e"),
            )
            .unwrap(),
            confusion_heatmap(
                &dir,
                "confusion",
                "Domain vs expert",
                &names(2, "domain "),
                &names(3, "e"),
                &[vec![10, 2, 0], vec![1, 0, 12]],
            )
            .unwrap(),
            wer_by_group(
                &dir,
                "wer",
                "WER per domain",
                &names(3, "system "),
                &names(2, "domain "),
                &[vec![0.2, 0.3], vec![0.15, f64::NAN], vec![0.1, 0.12]],
            )
            .unwrap(),
        ];
        for f in &files {
            check(&dir, f);
            assert_eq!(f.png, format!("{}.png", f.name));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn edge_cases_do_not_panic() {
        let dir = tempdir("plots-edge");
        let one = names(1, "only ");
        let files = vec![
            loss_curves(&dir, "empty", "Nothing", &[]).unwrap(),
            loss_curves(&dir, "nan", "NaN only", &[Series::new("x", [(0.0, f64::NAN), (f64::NAN, 1.0)])]).unwrap(),
            loss_curves(&dir, "single", "One point", &[Series::new("x", [(5.0, 1.0)])]).unwrap(),
            routing_entropy(&dir, "entropy1", "One expert", &[Series::new("h", [(0.0, 0.0), (1.0, 0.0)])], 1).unwrap(),
            temperature_phases(&dir, "temp_empty", "Empty", &[], &[], &[]).unwrap(),
            temperature_phases(&dir, "temp_one", "One", &[3.0], &[f64::NAN], &["soft".into()]).unwrap(),
            expert_load_over_time(&dir, "load1", "One expert", &[0.0, 1.0], &[vec![1.0], vec![f64::NAN]], &one)
                .unwrap(),
            expert_load_over_time(&dir, "load0", "None", &[], &[], &[]).unwrap(),
            expert_load_bars(&dir, "bars1", "One expert", &[1.0], &one).unwrap(),
            expert_load_bars(&dir, "bars0", "No experts", &[], &[]).unwrap(),
            gate_heatmap(&dir, "gate1", "One expert", &[vec![1.0], vec![f64::NAN]], &one).unwrap(),
            gate_heatmap(&dir, "gate0", "Empty", &[], &names(2, "e")).unwrap(),
            confusion_heatmap(&dir, "conf1", "One", &one, &one, &[vec![0]]).unwrap(),
            confusion_heatmap(&dir, "conf0", "Empty", &[], &[], &[]).unwrap(),
            wer_by_group(&dir, "wer_nan", "All NaN", &one, &one, &[vec![f64::NAN]]).unwrap(),
            wer_by_group(&dir, "wer0", "Empty", &[], &[], &[]).unwrap(),
        ];
        for f in &files {
            check(&dir, f);
        }
        assert!(expert_load_bars(&dir, "bad", "Mismatch", &[1.0, 2.0], &one).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rows_sorted_by_chosen_expert() {
        let probs = vec![vec![0.1, 0.9], vec![0.7, 0.3], vec![0.2, 0.8], vec![0.9, 0.1], vec![f64::NAN, 1.0]];
        assert_eq!(sort_by_chosen_expert(&probs), vec![(0, 3), (0, 1), (1, 0), (1, 2)]);
    }

    pub(crate) fn tempdir(what: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("whisper-moe-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
