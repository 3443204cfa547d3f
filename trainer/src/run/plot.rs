//! Figures, drawn with plotters: PNG or SVG by the file's extension. Every chart has
//! labelled axes with ticks; the series of one chart share it with a legend; a series over
//! several seeds is its mean with a band from the lowest to the highest seed.

use anyhow::{anyhow, bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// One line of a chart, with an optional band `(x, low, high)` around it.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub band: Vec<(f64, f64, f64)>,
}

impl Series {
    pub fn line(label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        let points = points.into_iter().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
        Self { label: label.into(), points, band: Vec::new() }
    }

    /// The mean over `runs` at every x they all reach, with a min-max band (one run: no band).
    pub fn over_seeds(label: impl Into<String>, runs: &[Vec<(f64, f64)>]) -> Self {
        let mut at: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for run in runs {
            for &(x, y) in run.iter().filter(|p| p.0.is_finite() && p.1.is_finite()) {
                at.entry(x.to_bits()).or_default().push(y);
            }
        }
        let full = at.into_iter().filter(|(_, ys)| ys.len() == runs.len());
        let (mut points, mut band) = (Vec::new(), Vec::new());
        for (x, ys) in full {
            let x = f64::from_bits(x);
            let mean = ys.iter().sum::<f64>() / ys.len() as f64;
            let (lo, hi) = ys.iter().fold((f64::MAX, f64::MIN), |(a, b), &y| (a.min(y), b.max(y)));
            points.push((x, mean));
            band.push((x, lo, hi));
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        band.sort_by(|a, b| a.0.total_cmp(&b.0));
        if runs.len() < 2 {
            band.clear();
        }
        Self { label: label.into(), points, band }
    }
}

/// A chart: title, axis labels and its series.
#[derive(Clone, Debug, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

impl Chart {
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
        }
    }
    pub fn with(mut self, s: Series) -> Self {
        self.series.push(s);
        self
    }
    fn is_empty(&self) -> bool {
        self.series.iter().all(|s| s.points.is_empty())
    }
}

const FONT: &str = "sans-serif";
const W: u32 = 960;
const CHART_H: u32 = 380;

/// plotters draws text with ab_glyph from a registered font: DejaVu Sans, built in, so a
/// figure looks the same on every machine.
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draws `charts` stacked top to bottom into `path` (`.png` or `.svg`), atomically.
pub fn save(path: &Path, charts: &[Chart]) -> Result<()> {
    if charts.is_empty() {
        bail!("{}: no chart to draw", path.display());
    }
    register_font();
    let size = (W, CHART_H * charts.len() as u32);
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let tmp = mosic::fsutil::temp_path(path);
    match ext.as_str() {
        "png" => {
            let mut buf = vec![0u8; (size.0 * size.1 * 3) as usize];
            {
                let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
                draw(&root, charts)?;
            }
            let img =
                image::RgbImage::from_raw(size.0, size.1, buf).expect("buffer of the image's size");
            img.save_with_format(&tmp, image::ImageFormat::Png)?;
        }
        "svg" => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
                draw(&root, charts)?;
            }
            std::fs::write(&tmp, svg)?;
        }
        _ => bail!("{}: figures are .png or .svg", path.display()),
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, charts: &[Chart]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing: {e:?}");
    root.fill(&WHITE).map_err(e)?;
    for (area, chart) in root.split_evenly((charts.len(), 1)).iter().zip(charts) {
        draw_chart(area, chart).map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

/// Axis range with 5% room on each side (a unit range around a constant).
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = 0.05 * (hi - lo);
    (lo - pad, hi + pad)
}

fn draw_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    chart: &Chart,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let xs = chart.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (x0, x1) = range(xs);
    let ys = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1).chain(s.band.iter().flat_map(|b| [b.1, b.2])));
    let (y0, y1) = range(ys);
    let mut c = ChartBuilder::on(area)
        .caption(&chart.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    c.configure_mesh()
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .draw()?;
    if chart.is_empty() {
        return Ok(());
    }
    for (i, s) in chart.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        if s.band.len() >= 2 {
            let mut outline: Vec<(f64, f64)> = s.band.iter().map(|b| (b.0, b.2)).collect();
            outline.extend(s.band.iter().rev().map(|b| (b.0, b.1)));
            c.draw_series(std::iter::once(Polygon::new(outline, color.mix(0.18).filled())))?;
        }
        let line = color.stroke_width(2);
        c.draw_series(LineSeries::new(s.points.clone(), line))?
            .label(&s.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], line));
        if s.points.len() <= 40 {
            c.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
    }
    c.configure_series_labels()
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}

/// Tick labels: short, scientific for very small or large values.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 || v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The run's curves: `loss.png` (loss and learning rate) and `validation.png` (mIoU by
/// protocol, one chart).
pub fn run_curves(run: &Path, history: &[crate::run::dir::StepStats]) {
    let at = |f: fn(&crate::run::dir::StepStats) -> f64| -> Vec<(f64, f64)> {
        history.iter().map(|s| (s.step as f64, f(s))).collect()
    };
    let loss = [
        Chart::new("training loss", "step", "loss").with(Series::line("loss", at(|s| s.loss))),
        Chart::new("learning rate", "step", "lr")
            .with(Series::line("head", at(|s| s.lr)))
            .with(Series::line("backbone", at(|s| s.lr_backbone))),
    ];
    warn(&run.join("loss.png"), save(&run.join("loss.png"), &loss));
    let mut val: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for s in history {
        for (k, v) in s.validation.iter().flatten() {
            val.entry(k.as_str()).or_default().push((s.step as f64, 100.0 * v));
        }
    }
    if !val.is_empty() {
        let mut chart = Chart::new("validation (EMA teacher)", "step", "mIoU %");
        for (k, v) in val {
            chart.series.push(Series::line(k, v));
        }
        warn(&run.join("validation.png"), save(&run.join("validation.png"), &[chart]));
    }
}

fn warn(path: &Path, r: Result<()>) {
    if let Err(e) = r {
        eprintln!("warning: could not write {}: {e:#}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_become_a_mean_and_a_band_over_the_steps_all_reach() {
        let s = Series::over_seeds(
            "x",
            &[vec![(1.0, 1.0), (2.0, 4.0), (3.0, 9.0)], vec![(1.0, 3.0), (2.0, 2.0)]],
        );
        assert_eq!(s.points, vec![(1.0, 2.0), (2.0, 3.0)]);
        assert_eq!(s.band, vec![(1.0, 1.0, 3.0), (2.0, 2.0, 4.0)]);
        assert!(Series::over_seeds("one", &[vec![(1.0, 1.0)]]).band.is_empty());
    }

    #[test]
    fn png_and_svg_are_written_with_labelled_axes_and_legends() {
        let dir = tempfile::tempdir().unwrap();
        let chart = Chart::new("loss", "step", "value")
            .with(Series::over_seeds(
                "mosic",
                &[vec![(0.0, 1.0), (10.0, 0.5)], vec![(0.0, 1.2), (10.0, 0.4)]],
            ))
            .with(Series::line("no-motion", vec![(0.0, 1.1), (10.0, f64::NAN), (20.0, 0.7)]));
        let empty = Chart::new("nothing yet", "step", "mIoU %");
        let png = dir.path().join("c.png");
        save(&png, &[chart.clone(), empty]).unwrap();
        let img = image::open(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (W, 2 * CHART_H));
        // Something besides white was drawn (text, lines, the band).
        let inked = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        assert!(inked > 5_000, "{inked} inked pixels");
        let svg = dir.path().join("c.svg");
        save(&svg, &[chart]).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        for needle in ["mosic", "no-motion", "step", "value", "<polygon"] {
            assert!(text.contains(needle), "svg lacks {needle}");
        }
        assert!(save(&dir.path().join("c.bmp"), &[Chart::default()]).is_err());
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(250.0), "250");
        assert_eq!(tick(0.125), "0.125");
        assert_eq!(tick(0.5), "0.5");
        assert_eq!(tick(2.5e-5), "2.5e-5");
    }
}
