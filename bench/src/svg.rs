//! `--svg PATH`: the rows of a run as an SVG chart, written by hand (no plotting
//! dependency): for each mode, requests per second and CPU per request, one group of
//! bars per cell (runtime, callers, payload), one bar per variant in that cell (the
//! "cost of safety" rows are in one cell only), both on log scales.
//! Each bar's tooltip (`<title>`) has its exact figure.

use std::fmt::Write as _;

use crate::report::Row;
use crate::variant::{Mode, Variant};

/// Bar colors, one per variant of a mode, in [`Variant::ALL`] order.
const PALETTE: [&str; 12] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#ad494a",
];

const BAR: f64 = 7.0;
const GROUP_GAP: f64 = 10.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const PLOT_HEIGHT: f64 = 200.0;
/// Room above a plot for its title.
const TITLE: f64 = 28.0;
/// Room below a plot for the cell labels.
const LABELS: f64 = 120.0;
const LEGEND_ROW: f64 = 16.0;
const LEGEND_COLUMN: f64 = 180.0;
const MIN_WIDTH: f64 = 600.0;

/// One figure of a row, and how it is named.
struct Metric {
    title: &'static str,
    unit: &'static str,
    value: fn(&Row) -> f64,
}

const METRICS: [Metric; 2] = [
    Metric {
        title: "requests per second (higher is better)",
        unit: "req/s",
        value: |row| row.median.rps,
    },
    Metric {
        title: "client CPU seconds per million requests (lower is better)",
        unit: "cpu s/M",
        value: |row| row.median.cpu_s_per_million,
    },
];

/// The chart of `rows`, as an SVG document. `caption` goes on top.
pub fn chart(rows: &[Row], caption: &str) -> String {
    let mut modes: Vec<Mode> = rows.iter().map(|r| r.median.variant.mode()).collect();
    modes.dedup();
    let sections: Vec<Section<'_>> = modes.iter().map(|&mode| Section::new(mode, rows)).collect();
    let width = sections
        .iter()
        .map(Section::width)
        .fold(MIN_WIDTH, f64::max);
    let height = 30.0 + sections.iter().map(Section::height).sum::<f64>();

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
        escape(caption)
    );
    let mut y = 30.0;
    for section in &sections {
        section.draw(&mut svg, y);
        y += section.height();
    }
    svg.push_str("</svg>\n");
    svg
}

/// The rows of one mode.
struct Section<'a> {
    mode: Mode,
    variants: Vec<Variant>,
    /// The cells, in row order, each with its rows.
    cells: Vec<Vec<&'a Row>>,
}

impl<'a> Section<'a> {
    fn new(mode: Mode, rows: &'a [Row]) -> Self {
        let rows: Vec<&Row> = rows
            .iter()
            .filter(|r| r.median.variant.mode() == mode)
            .collect();
        let variants: Vec<Variant> = Variant::ALL
            .iter()
            .copied()
            .filter(|v| rows.iter().any(|r| r.median.variant == *v))
            .collect();
        let mut cells: Vec<Vec<&Row>> = Vec::new();
        for row in rows {
            match cells.last_mut() {
                Some(cell) if same_cell(cell[0], row) => cell.push(row),
                _ => cells.push(vec![row]),
            }
        }
        Section {
            mode,
            variants,
            cells,
        }
    }

    /// The width of cell `g`'s group: a bar for each variant in it (the safety rows are in
    /// one cell only), and a gap.
    fn group_width(&self, g: usize) -> f64 {
        self.cells[g].len() as f64 * BAR + GROUP_GAP
    }

    /// Where cell `g`'s group starts.
    fn group_x(&self, g: usize) -> f64 {
        LEFT + (0..g).map(|i| self.group_width(i)).sum::<f64>()
    }

    fn width(&self) -> f64 {
        self.group_x(self.cells.len()) + RIGHT
    }

    /// Legend entries per line.
    fn legend_columns(&self) -> usize {
        (((self.width().max(MIN_WIDTH) - LEFT) / LEGEND_COLUMN) as usize).max(1)
    }

    fn legend_rows(&self) -> usize {
        self.variants.len().div_ceil(self.legend_columns())
    }

    fn height(&self) -> f64 {
        24.0 + self.legend_rows() as f64 * LEGEND_ROW
            + METRICS.len() as f64 * (TITLE + PLOT_HEIGHT + LABELS)
    }

    fn color(&self, variant: Variant) -> &'static str {
        let i = self.variants.iter().position(|&v| v == variant);
        PALETTE[i.unwrap_or(0) % PALETTE.len()]
    }

    fn draw(&self, svg: &mut String, top: f64) {
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{:.1}" font-size="13" font-weight="bold">{} mode</text>"#,
            top + 14.0,
            self.mode
        );
        for (i, &variant) in self.variants.iter().enumerate() {
            let columns = self.legend_columns();
            let x = LEFT + (i % columns) as f64 * LEGEND_COLUMN;
            let y = top + 22.0 + (i / columns) as f64 * LEGEND_ROW;
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                y,
                self.color(variant),
                x + 14.0,
                y + 9.0,
                variant.name()
            );
        }
        let mut y = top + 24.0 + self.legend_rows() as f64 * LEGEND_ROW;
        for metric in &METRICS {
            self.plot(svg, metric, y);
            y += TITLE + PLOT_HEIGHT + LABELS;
        }
    }

    /// One metric: title, log axis with a line per power of ten, the bars, cell labels.
    fn plot(&self, svg: &mut String, metric: &Metric, top: f64) {
        let values = self
            .cells
            .iter()
            .flatten()
            .map(|r| (metric.value)(r))
            .filter(|v| v.is_finite() && *v > 0.0);
        let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        if hi <= 0.0 {
            return;
        }
        let (lo, hi) = (
            lo.log10().floor(),
            hi.log10().ceil().max(lo.log10().floor() + 1.0),
        );
        let plot_top = top + TITLE;
        let bottom = plot_top + PLOT_HEIGHT;
        let right = self.group_x(self.cells.len());
        let y_of = |v: f64| bottom - (v.log10() - lo) / (hi - lo) * PLOT_HEIGHT;

        let _ = writeln!(
            svg,
            r#"<text x="{LEFT}" y="{:.1}" font-weight="bold">{} ({})</text>"#,
            top + 18.0,
            escape(metric.title),
            metric.unit
        );
        for decade in lo as i32..=hi as i32 {
            let v = 10f64.powi(decade);
            let y = y_of(v);
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT - 4.0,
                y + 4.0,
                short(v)
            );
        }
        for (g, cell) in self.cells.iter().enumerate() {
            let x0 = self.group_x(g);
            for (v, row) in cell.iter().enumerate() {
                let value = (metric.value)(row);
                if !(value.is_finite() && value > 0.0) {
                    continue;
                }
                let x = x0 + v as f64 * BAR;
                let y = y_of(value);
                let s = &row.median;
                let _ = writeln!(
                    svg,
                    r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {} c={} {}: {} {}</title></rect>"#,
                    BAR - 1.0,
                    bottom - y,
                    self.color(s.variant),
                    s.variant.name(),
                    s.runtime,
                    s.concurrency,
                    s.payload,
                    figure(value),
                    metric.unit
                );
            }
            let s = &cell[0].median;
            let cx = x0 + (self.group_width(g) - GROUP_GAP) / 2.0;
            let _ = writeln!(
                svg,
                r#"<text transform="translate({cx:.1},{:.1}) rotate(-60)" text-anchor="end">{} c={} {}</text>"#,
                bottom + 10.0,
                s.runtime,
                s.concurrency,
                payload_label(&s.payload.to_string())
            );
        }
        let _ = writeln!(
            svg,
            r#"<line x1="{LEFT}" y1="{bottom:.1}" x2="{right:.1}" y2="{bottom:.1}" stroke="black"/>"#
        );
    }
}

fn same_cell(a: &Row, b: &Row) -> bool {
    let (a, b) = (&a.median, &b.median);
    (a.runtime, a.concurrency, a.payload) == (b.runtime, b.concurrency, b.payload)
}

/// `16`, `1K`, `16K`, `PING`, `SET 1K`.
fn payload_label(payload: &str) -> String {
    payload
        .split(' ')
        .map(|word| match word.parse::<usize>() {
            Ok(n) if n >= 1024 && n % 1024 == 0 => format!("{}K", n / 1024),
            _ => word.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// An axis label: `0.1`, `1`, `100`, `10k`, `1M`.
fn short(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{}M", v / 1e6),
        v if v >= 1e3 => format!("{}k", v / 1e3),
        v => format!("{v}"),
    }
}

/// A bar's figure, three significant digits or so.
fn figure(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(payload_label("16384"), "16K");
        assert_eq!(payload_label("SET 1024"), "SET 1K");
        assert_eq!(payload_label("PING"), "PING");
        assert_eq!(short(1e6), "1M");
        assert_eq!(short(10_000.0), "10k");
        assert_eq!(short(0.1), "0.1");
    }
}
