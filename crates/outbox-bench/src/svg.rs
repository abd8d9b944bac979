//! Grouped bar charts as self-contained SVG, without dependencies.
//!
//! One chart is a [`Chart`]: groups along the horizontal axis, one bar per series in
//! each group, a value axis from 0 with round ticks and the unit, a legend when there
//! is more than one series, and each bar's value on or above it. A value that is not a
//! finite number is drawn as an absent bar marked "n/a". The drawing is 720×360, on a
//! white background so that it reads the same on a dark page.

use crate::harness::{Chart, fmt_num};
use std::fmt::Write as _;

/// Width of the drawing, in pixels.
const WIDTH: f64 = 720.0;
/// Height of the drawing, in pixels.
const HEIGHT: f64 = 360.0;
/// Left margin: the unit and the tick labels.
const LEFT: f64 = 78.0;
/// Right margin.
const RIGHT: f64 = 16.0;
/// Bottom margin below the group labels.
const BOTTOM: f64 = 10.0;
/// Font size of the group labels, and the smaller one for narrow groups whose labels
/// would otherwise take more than [`LABEL_LINES`] lines.
const LABEL_SIZES: [f64; 2] = [12.0, 10.0];
/// Lines a group label may take at the larger size.
const LABEL_LINES: usize = 2;
/// Height of one row of the legend.
const LEGEND_ROW: f64 = 20.0;
/// Font size of the values on the bars.
const VALUE_SIZE: f64 = 11.0;
/// The font of every text.
const FONT: &str = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif";
/// Series colours (Tableau 10): distinct, and readable by most colour-blind readers.
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// The chart as an SVG document.
pub(crate) fn render(chart: &Chart) -> String {
    let mut svg = String::new();
    let legend_rows = if chart.series.len() > 1 {
        legend_layout(&chart.series).last().map_or(0, |l| l.row + 1)
    } else {
        0
    };
    let top = 40.0 + legend_rows as f64 * LEGEND_ROW + 14.0;
    let groups = chart.groups.len().max(1);
    let group_w = (WIDTH - RIGHT - LEFT) / groups as f64;
    let labels = GroupLabels::fit(&chart.groups, group_w);
    let plot = Plot {
        left: LEFT,
        right: WIDTH - RIGHT,
        top,
        bottom: HEIGHT - BOTTOM - labels.height(),
    };
    let max = chart
        .series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let axis = Axis::for_max(max);

    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{title}\" \
         font-family=\"{FONT}\">\n<title>{title}</title>\n\
         <rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"#ffffff\"/>\n\
         <text x=\"{x}\" y=\"24\" font-size=\"16\" font-weight=\"bold\" fill=\"#222222\" \
         text-anchor=\"middle\">{title}</text>\n",
        title = escape(&chart.title),
        x = WIDTH / 2.0,
    );
    if legend_rows > 0 {
        legend(&mut svg, &chart.series);
    }

    // The value axis: grid lines, tick labels, the unit.
    for (i, tick) in axis.ticks().enumerate() {
        let y = plot.y(tick, axis.top);
        let colour = if i == 0 { "#666666" } else { "#e3e3e3" };
        let _ = writeln!(
            svg,
            "<line x1=\"{l}\" y1=\"{y:.1}\" x2=\"{r}\" y2=\"{y:.1}\" stroke=\"{colour}\" \
             stroke-width=\"1\"/>\n<text x=\"{tx}\" y=\"{y:.1}\" dy=\"0.35em\" font-size=\"11\" \
             fill=\"#555555\" text-anchor=\"end\">{label}</text>",
            l = plot.left,
            r = plot.right,
            tx = plot.left - 6.0,
            label = escape(&axis.label(tick)),
        );
    }
    let _ = writeln!(
        svg,
        "<text transform=\"translate(16 {y:.1}) rotate(-90)\" font-size=\"12\" fill=\"#444444\" \
         text-anchor=\"middle\">{unit}</text>",
        y = (plot.top + plot.bottom) / 2.0,
        unit = escape(&chart.unit),
    );

    // The bars, group by group.
    let series = chart.series.len().max(1);
    let bar_w = (group_w * 0.8 / series as f64).min(90.0);
    // Values run along the bars when one of them is too wide to sit across its bar: all
    // of them, so that the chart reads one way.
    let along = chart
        .series
        .iter()
        .flat_map(|(_, v)| v.iter())
        .filter(|v| v.is_finite())
        .any(|v| text_width(&fmt_num(*v), VALUE_SIZE) + 8.0 > bar_w);
    for g in 0..chart.groups.len() {
        let centre = plot.left + group_w * (g as f64 + 0.5);
        let first = centre - bar_w * series as f64 / 2.0;
        for (s, (_, values)) in chart.series.iter().enumerate() {
            let x = first + bar_w * s as f64;
            let value = values.get(g).copied().unwrap_or(f64::NAN);
            bar(&mut svg, &plot, &axis, (x, bar_w), value, s, along);
        }
        labels.draw(&mut svg, g, centre, plot.bottom);
    }
    svg.push_str("</svg>\n");
    svg
}

/// The plotting area, in pixels.
#[derive(Debug, Clone, Copy)]
struct Plot {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

impl Plot {
    fn height(&self) -> f64 {
        self.bottom - self.top
    }

    /// The vertical position of `value` on an axis from 0 to `top`.
    fn y(&self, value: f64, top: f64) -> f64 {
        self.bottom - self.height() * (value.max(0.0) / top)
    }
}

/// A value axis from 0 to `top` in steps of `step`, both round numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Axis {
    step: f64,
    top: f64,
}

impl Axis {
    /// About five round steps that cover `max` (0 to 1 when there is nothing to show).
    fn for_max(max: f64) -> Self {
        if !(max.is_finite() && max > 0.0) {
            return Self {
                step: 0.2,
                top: 1.0,
            };
        }
        let step = nice_step(max / 5.0);
        let steps = (max / step - 1e-9).ceil().max(1.0);
        Self {
            step,
            top: step * steps,
        }
    }

    /// The tick values, 0 included.
    fn ticks(&self) -> impl Iterator<Item = f64> + '_ {
        let n = (self.top / self.step).round() as usize;
        (0..=n).map(move |i| self.step * i as f64)
    }

    /// A tick's label: `25k`, `1.5M`, `2 500`, `0.25`.
    fn label(&self, v: f64) -> String {
        let (scaled, step, suffix) = if self.top >= 10_000_000.0 {
            (v / 1e6, self.step / 1e6, "M")
        } else if self.top >= 10_000.0 {
            (v / 1e3, self.step / 1e3, "k")
        } else {
            (v, self.step, "")
        };
        if v == 0.0 {
            return "0".into();
        }
        let decimals = decimals_of(step);
        if decimals == 0 && scaled.abs() >= 1000.0 {
            return format!("{}{suffix}", fmt_num(scaled));
        }
        let mut text = format!("{scaled:.decimals$}");
        if text.contains('.') {
            text = text.trim_end_matches('0').trim_end_matches('.').to_owned();
        }
        format!("{text}{suffix}")
    }
}

/// The round number (1, 2, 2.5 or 5 times a power of ten) at or above `raw`.
fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    let fraction = raw / magnitude;
    let nice = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .find(|n| fraction <= *n + 1e-9)
        .unwrap_or(10.0);
    nice * magnitude
}

/// The decimals a multiple of `step` needs to be printed exactly.
fn decimals_of(step: f64) -> usize {
    (0..6)
        .find(|d| {
            let scaled = step * 10f64.powi(*d);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
        })
        .unwrap_or(6) as usize
}

/// Draws one bar at `x` of width `w` (or its absence) and its value label: across the
/// bar above it, or `along` it (inside when the bar is tall enough, above it otherwise).
fn bar(
    svg: &mut String,
    plot: &Plot,
    axis: &Axis,
    (x, w): (f64, f64),
    value: f64,
    series: usize,
    along: bool,
) {
    let colour = PALETTE[series % PALETTE.len()];
    let cx = x + w / 2.0;
    if !value.is_finite() {
        let _ = writeln!(
            svg,
            "<text class=\"na\" x=\"{cx:.1}\" y=\"{y:.1}\" font-size=\"11\" fill=\"#888888\" \
             text-anchor=\"middle\">n/a</text>",
            y = plot.bottom - 5.0,
        );
        return;
    }
    let y = plot.y(value, axis.top);
    let h = plot.bottom - y;
    let gap = (w * 0.08).min(3.0);
    let _ = writeln!(
        svg,
        "<rect class=\"bar\" x=\"{bx:.2}\" y=\"{y:.2}\" width=\"{bw:.2}\" height=\"{h:.2}\" \
         fill=\"{colour}\"><title>{label}</title></rect>",
        bx = x + gap / 2.0,
        bw = w - gap,
        label = escape(&fmt_num(value)),
    );
    let label = escape(&fmt_num(value));
    let size = VALUE_SIZE;
    let text_w = text_width(&fmt_num(value), size);
    if !along {
        let _ = writeln!(
            svg,
            "<text x=\"{cx:.1}\" y=\"{ty:.1}\" font-size=\"{size}\" fill=\"#222222\" \
             text-anchor=\"middle\">{label}</text>",
            ty = y - 4.0,
        );
    } else if h >= text_w + 10.0 {
        let _ = writeln!(
            svg,
            "<text transform=\"translate({tx:.1} {ty:.1}) rotate(-90)\" font-size=\"{size}\" \
             fill=\"{ink}\" text-anchor=\"end\">{label}</text>",
            tx = cx + size * 0.35,
            ty = y + 5.0,
            ink = ink_on(colour),
        );
    } else {
        let _ = writeln!(
            svg,
            "<text transform=\"translate({tx:.1} {ty:.1}) rotate(-90)\" font-size=\"{size}\" \
             fill=\"#222222\" text-anchor=\"start\">{label}</text>",
            tx = cx + size * 0.35,
            ty = y - 4.0,
        );
    }
}

/// The groups' labels, wrapped to their groups' width: at the larger size when each
/// takes at most [`LABEL_LINES`] lines, else at the smaller one in as many lines as it
/// needs (the bottom margin grows to hold them).
struct GroupLabels {
    size: f64,
    lines: Vec<Vec<String>>,
}

impl GroupLabels {
    fn fit(groups: &[String], width: f64) -> Self {
        let wrapped = |size: f64| -> Vec<Vec<String>> {
            groups.iter().map(|g| wrap(g, width - 4.0, size)).collect()
        };
        let large = wrapped(LABEL_SIZES[0]);
        if large.iter().all(|l| l.len() <= LABEL_LINES) {
            return Self {
                size: LABEL_SIZES[0],
                lines: large,
            };
        }
        Self {
            size: LABEL_SIZES[1],
            lines: wrapped(LABEL_SIZES[1]),
        }
    }

    /// The height of the tallest label, with the gap above it.
    fn height(&self) -> f64 {
        let lines = self.lines.iter().map(Vec::len).max().unwrap_or(1).max(1);
        self.size * 0.8 + lines as f64 * self.size * 1.2
    }

    /// Draws group `g`'s label under its bars.
    fn draw(&self, svg: &mut String, g: usize, centre: f64, baseline: f64) {
        let Some(lines) = self.lines.get(g) else {
            return;
        };
        let size = self.size;
        let _ = write!(
            svg,
            "<text x=\"{centre:.1}\" y=\"{y:.1}\" font-size=\"{size}\" fill=\"#333333\" \
             text-anchor=\"middle\">",
            y = baseline + size * 1.4,
        );
        for (i, line) in lines.iter().enumerate() {
            let _ = write!(
                svg,
                "<tspan x=\"{centre:.1}\" dy=\"{dy}\">{}</tspan>",
                escape(line),
                dy = if i == 0 { "0" } else { "1.2em" },
            );
        }
        svg.push_str("</text>\n");
    }
}

/// `text` in lines that each fit in `width` where they can, breaking at spaces, and
/// after the hyphens of a word too wide for a line: each line takes as many pieces as
/// fit (a piece wider than `width` gets a line of its own).
fn wrap(text: &str, width: f64, size: f64) -> Vec<String> {
    // Each piece with what joins it to the previous one on a line.
    let mut pieces: Vec<(&str, &str)> = Vec::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        if text_width(word, size) <= width {
            pieces.push((" ", word));
            continue;
        }
        for (i, part) in word.split_inclusive('-').enumerate() {
            pieces.push((if i == 0 { " " } else { "" }, part));
        }
    }
    let mut lines: Vec<String> = Vec::new();
    for (join, piece) in pieces {
        match lines.last_mut() {
            Some(line) if text_width(&format!("{line}{join}{piece}"), size) <= width => {
                line.push_str(join);
                line.push_str(piece);
            }
            _ => lines.push(piece.to_owned()),
        }
    }
    if lines.is_empty() {
        lines.push(String::new());
    }
    lines
}

/// Where each legend entry goes: its row and its horizontal position.
#[derive(Debug, Clone, Copy)]
struct LegendSlot {
    row: usize,
    x: f64,
}

/// The legend entries laid out left to right in rows as wide as the drawing.
fn legend_layout(series: &[(String, Vec<f64>)]) -> Vec<LegendSlot> {
    let mut slots = Vec::with_capacity(series.len());
    let (start, end) = (LEFT, WIDTH - RIGHT);
    let (mut row, mut x) = (0, start);
    for (name, _) in series {
        let w = 18.0 + text_width(name, 12.0) + 18.0;
        if x > start && x + w > end {
            row += 1;
            x = start;
        }
        slots.push(LegendSlot { row, x });
        x += w;
    }
    slots
}

/// The legend: one swatch and name per series, under the title.
fn legend(svg: &mut String, series: &[(String, Vec<f64>)]) {
    for (i, ((name, _), slot)) in series.iter().zip(legend_layout(series)).enumerate() {
        let y = 40.0 + slot.row as f64 * LEGEND_ROW;
        let _ = writeln!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{sy:.1}\" width=\"12\" height=\"12\" fill=\"{c}\"/>\
             <text x=\"{tx:.1}\" y=\"{ty:.1}\" font-size=\"12\" fill=\"#333333\">{name}</text>",
            x = slot.x,
            sy = y,
            c = PALETTE[i % PALETTE.len()],
            tx = slot.x + 17.0,
            ty = y + 10.5,
            name = escape(name),
        );
    }
}

/// An estimate of how wide `text` is drawn at `size` pixels in a sans-serif font.
fn text_width(text: &str, size: f64) -> f64 {
    text.chars()
        .map(|c| match c {
            ' ' | '.' | ',' | ':' | '\'' | 'i' | 'l' | 'j' | '|' | '(' | ')' => 0.3,
            'm' | 'w' | 'M' | 'W' | '%' => 0.85,
            c if c.is_uppercase() => 0.68,
            _ => 0.56,
        })
        .sum::<f64>()
        * size
}

/// Black or white, whichever reads better on `colour` (`#rrggbb`).
fn ink_on(colour: &str) -> &'static str {
    let channel = |i: usize| {
        colour
            .get(i..i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .map_or(0.0, |v| f64::from(v) / 255.0)
    };
    let luminance = 0.2126 * channel(1) + 0.7152 * channel(3) + 0.0722 * channel(5);
    if luminance > 0.55 {
        "#111111"
    } else {
        "#ffffff"
    }
}

/// `text` with the five XML special characters escaped.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(series: Vec<(&str, Vec<f64>)>, groups: &[&str]) -> Chart {
        Chart {
            name: "t".into(),
            title: "Test chart".into(),
            unit: "events/s".into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            series: series.into_iter().map(|(n, v)| (n.to_owned(), v)).collect(),
        }
    }

    /// Checks that tags nest and close, attributes are quoted, and every `&` starts an
    /// entity: enough of XML's well-formedness to catch what a string builder breaks.
    fn assert_well_formed(svg: &str) {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(open) = rest.find('<') {
            let text = &rest[..open];
            assert_entities(text);
            assert!(!text.contains('>'), "stray '>' in text: {text:?}");
            let close = rest[open..].find('>').expect("unclosed tag") + open;
            let tag = &rest[open + 1..close];
            assert!(!tag.contains('<'), "'<' inside a tag: {tag:?}");
            assert_eq!(
                tag.matches('"').count() % 2,
                0,
                "unbalanced quotes: {tag:?}"
            );
            if let Some(name) = tag.strip_prefix('/') {
                let top = stack
                    .pop()
                    .unwrap_or_else(|| panic!("</{name}> closes nothing"));
                assert_eq!(top, name.trim(), "</{name}> closes <{top}>");
            } else if !tag.ends_with('/') && !tag.starts_with('?') && !tag.starts_with('!') {
                let name = tag.split_whitespace().next().expect("tag name");
                stack.push(name.to_owned());
            }
            for value in tag.split('"').skip(1).step_by(2) {
                assert_entities(value);
            }
            rest = &rest[close + 1..];
        }
        assert!(rest.trim().is_empty(), "text after the root: {rest:?}");
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    }

    fn assert_entities(text: &str) {
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..text[i..].find(';').map_or(text.len(), |j| i + j + 1)];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&entity),
                "bad entity {entity:?}"
            );
        }
    }

    /// The `height` of every bar, in order.
    fn bar_heights(svg: &str) -> Vec<f64> {
        svg.split("<rect class=\"bar\"")
            .skip(1)
            .map(|s| {
                let h = s.split("height=\"").nth(1).expect("height");
                h[..h.find('"').expect("quote")].parse().expect("number")
            })
            .collect()
    }

    #[test]
    fn charts_are_well_formed() {
        let one = chart(vec![("outbox-rs", vec![1.0, 2.0, 3.0])], &["a", "b", "c"]);
        let many = chart(
            vec![
                ("outbox-rs", vec![86_412.0, f64::NAN]),
                ("pgmq", vec![65_900.0, 1.0]),
                ("graphile-worker", vec![0.0, 12.5]),
            ],
            &["1 relay", "a much longer group label that needs two lines"],
        );
        let empty = chart(vec![], &[]);
        for c in [&one, &many, &empty] {
            assert_well_formed(&render(c));
        }
        // When xmllint is at hand, it has the last word.
        let dir = std::env::temp_dir().join(format!("outbox-bench-svg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("many.svg");
        std::fs::write(&file, render(&many)).expect("write");
        if let Ok(out) = std::process::Command::new("xmllint")
            .arg("--noout")
            .arg(&file)
            .output()
        {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bar_heights_are_proportional_to_values() {
        let svg = render(&chart(
            vec![("a", vec![100.0, 50.0]), ("b", vec![25.0, 75.0])],
            &["x", "y"],
        ));
        let h = bar_heights(&svg);
        assert_eq!(h.len(), 4);
        // Group by group: a(x), b(x), a(y), b(y).
        let unit = h[0] / 100.0;
        for (height, value) in h.iter().zip([100.0, 25.0, 50.0, 75.0]) {
            assert!((height - value * unit).abs() < 0.02, "{h:?}");
        }
        // The axis starts at 0: the tallest bar fills most of the plot.
        assert!(h[0] > 100.0, "{h:?}");
    }

    #[test]
    fn missing_values_are_absent_and_marked() {
        let svg = render(&chart(vec![("a", vec![10.0, f64::NAN])], &["x", "y"]));
        assert_eq!(bar_heights(&svg).len(), 1);
        assert_eq!(svg.matches("class=\"na\"").count(), 1);
        assert!(svg.contains(">n/a</text>"));
    }

    #[test]
    fn legend_only_with_several_series() {
        let one = render(&chart(vec![("only-series", vec![1.0])], &["x"]));
        assert!(!one.contains("only-series"));
        let two = render(&chart(
            vec![("s-one", vec![1.0]), ("s-two", vec![2.0])],
            &["x"],
        ));
        assert!(two.contains(">s-one</text>") && two.contains(">s-two</text>"));
    }

    #[test]
    fn text_is_escaped() {
        let mut c = chart(vec![("a<b", vec![1.0]), ("\"q\"", vec![2.0])], &["x & y"]);
        c.title = "UPDATE … RETURNING <rows> & 'more'".into();
        c.unit = "rows/s <unit>".into();
        let svg = render(&c);
        assert_well_formed(&svg);
        assert!(svg.contains("UPDATE … RETURNING &lt;rows&gt; &amp; &apos;more&apos;"));
        assert!(
            svg.contains("x &amp; y") && svg.contains("a&lt;b") && svg.contains("&quot;q&quot;")
        );
        assert!(svg.contains("rows/s &lt;unit&gt;"));
        assert!(!svg.contains("<rows>") && !svg.contains("<unit>"));
    }

    /// Eleven groups with long labels (the latency chart): every line of a label fits
    /// its group unless it cannot be broken, and the plot leaves room for the tallest
    /// label.
    #[test]
    fn long_labels_of_narrow_groups_wrap_within_their_group() {
        let groups: Vec<String> = (0..11)
            .map(|i| format!("in-process wake, concurrency 4, linger.ms=0, {i}000/s"))
            .collect();
        let group_w = (WIDTH - RIGHT - LEFT) / groups.len() as f64;
        let labels = GroupLabels::fit(&groups, group_w);
        assert_eq!(
            labels.size, LABEL_SIZES[1],
            "narrow groups take the smaller size"
        );
        for line in labels.lines.iter().flatten() {
            let unbreakable = !line.contains([' ', '-']);
            assert!(
                unbreakable || text_width(line, labels.size) <= group_w,
                "{line:?} is wider than its group ({group_w:.0} px)"
            );
        }
        let lines = labels.lines.iter().map(Vec::len).max().unwrap();
        assert!(lines > LABEL_LINES);
        assert!(labels.height() >= lines as f64 * labels.size);
        let refs: Vec<&str> = groups.iter().map(String::as_str).collect();
        assert_well_formed(&render(&chart(vec![("p50", vec![1.0; 11])], &refs)));

        let short = GroupLabels::fit(&["1 relay".to_owned(), "2 relays".to_owned()], 300.0);
        assert_eq!(short.size, LABEL_SIZES[0]);
        assert_eq!(short.lines, vec![vec!["1 relay"], vec!["2 relays"]]);
    }

    #[test]
    fn axes_have_round_ticks_from_zero() {
        assert_eq!(
            Axis::for_max(206_000.0),
            Axis {
                step: 50_000.0,
                top: 250_000.0
            }
        );
        assert_eq!(
            Axis::for_max(97.0),
            Axis {
                step: 20.0,
                top: 100.0
            }
        );
        assert_eq!(
            Axis::for_max(1.0),
            Axis {
                step: 0.2,
                top: 1.0
            }
        );
        assert_eq!(
            Axis::for_max(11_800.0),
            Axis {
                step: 2_500.0,
                top: 12_500.0
            }
        );
        assert_eq!(
            Axis::for_max(0.0),
            Axis {
                step: 0.2,
                top: 1.0
            }
        );
        let a = Axis::for_max(206_000.0);
        let labels: Vec<String> = a.ticks().map(|t| a.label(t)).collect();
        assert_eq!(labels, ["0", "50k", "100k", "150k", "200k", "250k"]);
        let a = Axis::for_max(11_800.0);
        assert_eq!(a.label(7_500.0), "7.5k");
        let a = Axis::for_max(4.4);
        assert_eq!(a.label(1.0), "1");
        let a = Axis::for_max(1.1);
        assert_eq!(a.label(0.25), "0.25");
    }
}
