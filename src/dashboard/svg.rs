//! Chart primitives as inline SVG strings, so the dashboard is one file that
//! renders offline with no chart library. Every label that came from the
//! ledger is escaped here; callers pass raw strings.

use std::fmt::Write;

use super::esc;

/// A series colour, picked from a palette that reads on light and dark
/// backgrounds.
pub const PALETTE: [&str; 10] = [
    "#6366f1", "#10b981", "#f59e0b", "#ef4444", "#06b6d4", "#a855f7", "#84cc16", "#ec4899",
    "#14b8a6", "#f97316",
];

/// The palette colour for the `i`-th series.
pub fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// A value axis top that is a round number at or above `max`, and its step,
/// so gridlines fall on readable amounts.
pub fn nice_ceiling(max: f64) -> (f64, f64) {
    if !max.is_finite() || max <= 0.0 {
        return (1.0, 0.25);
    }
    let raw_step = max / 4.0;
    let mag = 10f64.powf(raw_step.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw_step)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil().max(1.0) * step, step)
}

/// Short money label for an axis gridline at `v`, with as many decimals as
/// the gridline `step` needs (`$0.25`, `$0.00005`, `$1.25k`): cheap models
/// spend fractions of a cent a day, and a fixed precision would print the
/// same label on every gridline.
pub fn axis_usd(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "$0".into();
    }
    if v >= 1000.0 && step >= 10.0 {
        return format!("${:.*}k", decimals(step / 1000.0), v / 1000.0);
    }
    format!("${v:.*}", decimals(step))
}

/// The fewest decimals that print every multiple of `step` exactly (steps
/// come from [`nice_ceiling`]: 1, 2, 2.5 or 5 times a power of ten).
fn decimals(step: f64) -> usize {
    (0..=12)
        .find(|d| {
            let scaled = step * 10f64.powi(*d as i32);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
        })
        .unwrap_or(12)
}

/// One bar segment of a stacked chart.
pub struct Segment<'a> {
    /// Index of the slot (x position).
    pub slot: usize,
    /// Series index (colour and stacking order).
    pub series: usize,
    /// Series name, for the tooltip and data attribute.
    pub series_name: &'a str,
    /// Value (USD).
    pub value: f64,
    /// Tooltip text.
    pub title: String,
}

/// A stacked bar chart: one column per slot, segments stacked in the order
/// given. Each segment is a `rect.seg` carrying `data-slot`, `data-series`
/// and `data-value`, so tests can count and sum them.
pub fn stacked_bars(slot_labels: &[String], segments: &[Segment<'_>]) -> String {
    let (w, h) = (960.0_f64, 300.0_f64);
    let (left, right, top, bottom) = (56.0, 12.0, 12.0, 28.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let n = slot_labels.len().max(1);
    let mut totals = vec![0.0_f64; n];
    for s in segments {
        if let Some(t) = totals.get_mut(s.slot) {
            *t += s.value.max(0.0);
        }
    }
    let max = totals.iter().copied().fold(0.0, f64::max);
    let (ceil, step) = nice_ceiling(max);
    let y = |v: f64| top + ph - v / ceil * ph;
    let slot_w = pw / n as f64;
    let bar_w = (slot_w * 0.72).max(1.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart stacked" viewBox="0 0 {w} {h}" role="img" aria-label="Cost per day, stacked by provider">"#
    );
    let mut v = 0.0;
    while v <= ceil + step / 2.0 {
        let yy = y(v);
        let _ = write!(
            s,
            r#"<line class="grid" x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}"/><text class="axis" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            w - right,
            left - 8.0,
            yy + 4.0,
            esc(&axis_usd(v, step))
        );
        v += step;
    }
    let label_every = n.div_ceil(10).max(1);
    for (i, l) in slot_labels.iter().enumerate() {
        if i % label_every == 0 || i + 1 == n {
            let x = left + slot_w * (i as f64 + 0.5);
            let _ = write!(
                s,
                r#"<text class="axis" x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
                h - 8.0,
                esc(l)
            );
        }
    }
    let mut stack = vec![0.0_f64; n];
    for seg in segments {
        let Some(base) = stack.get_mut(seg.slot) else {
            continue;
        };
        let v = seg.value.max(0.0);
        let y1 = y(*base + v);
        let hgt = (y(*base) - y1).max(0.0);
        *base += v;
        let x = left + slot_w * seg.slot as f64 + (slot_w - bar_w) / 2.0;
        let _ = write!(
            s,
            r#"<rect class="seg" x="{x:.2}" y="{y1:.2}" width="{bar_w:.2}" height="{hgt:.2}" fill="{}" data-slot="{}" data-series="{}" data-value="{v}"><title>{}</title></rect>"#,
            colour(seg.series),
            seg.slot,
            esc(seg.series_name),
            esc(&seg.title)
        );
    }
    s.push_str("</svg>");
    s
}

/// One row of a horizontal bar list.
pub struct HBar<'a> {
    /// Label on the left (escaped here).
    pub label: &'a str,
    /// Bar length relative to the largest value.
    pub value: f64,
    /// Text on the right (escaped here).
    pub value_text: String,
    /// Bar colour.
    pub colour: &'a str,
}

/// Horizontal bars as HTML rows with an inline SVG bar each: long labels
/// (model ids) wrap in HTML instead of being clipped inside SVG.
pub fn hbars(rows: &[HBar<'_>], class: &str) -> String {
    let max = rows.iter().map(|r| r.value).fold(0.0, f64::max);
    let mut s = format!(r#"<div class="hbars {}">"#, esc(class));
    for r in rows {
        let pct = if max > 0.0 {
            (r.value / max * 100.0).clamp(0.0, 100.0)
        } else {
            0.0
        };
        let _ = write!(
            s,
            r#"<div class="hbar"><div class="hbar-label" title="{l}">{l}</div><svg class="hbar-track" viewBox="0 0 100 10" preserveAspectRatio="none"><rect class="hbar-fill" x="0" y="0" width="{pct:.2}" height="10" rx="2" fill="{}" data-value="{}"/></svg><div class="hbar-value">{}</div></div>"#,
            r.colour,
            r.value,
            esc(&r.value_text),
            l = esc(r.label),
        );
    }
    s.push_str("</div>");
    s
}

/// A donut of `(label, value, colour)` slices; each slice is a
/// `circle.slice` with `data-label` and `data-value`.
pub fn donut(slices: &[(String, f64, &str)], centre_big: &str, centre_small: &str) -> String {
    let total: f64 = slices.iter().map(|s| s.1.max(0.0)).sum();
    let r = 15.915_494_309_189_533_f64; // circumference 100
    let mut s = String::from(
        r#"<svg class="chart donut" viewBox="0 0 42 42" role="img" aria-label="Routing distribution by tier">"#,
    );
    let _ = write!(
        s,
        r#"<circle class="donut-ring" cx="21" cy="21" r="{r}" fill="none" stroke-width="5"/>"#
    );
    let mut offset = 25.0; // start at 12 o'clock
    for (label, value, colour) in slices {
        let pct = if total > 0.0 {
            value.max(0.0) / total * 100.0
        } else {
            0.0
        };
        let _ = write!(
            s,
            r#"<circle class="slice" cx="21" cy="21" r="{r}" fill="none" stroke="{colour}" stroke-width="5" stroke-dasharray="{pct:.3} {:.3}" stroke-dashoffset="{offset:.3}" data-label="{}" data-value="{value}"><title>{}: {:.1}%</title></circle>"#,
            100.0 - pct,
            esc(label),
            esc(label),
            pct
        );
        offset -= pct;
    }
    let _ = write!(
        s,
        r#"<text class="donut-big" x="21" y="21.5" text-anchor="middle" style="font-size:{:.2}px">{}</text><text class="donut-small" x="21" y="26" text-anchor="middle">{}</text></svg>"#,
        // The hole is ~21 units wide: shrink long numbers to fit it.
        (19.0 / centre_big.chars().count().max(1) as f64 * 1.6).min(7.0),
        esc(centre_big),
        esc(centre_small)
    );
    s
}

/// A budget bar: spent (solid), held by calls in flight (striped),
/// threshold markers and the month-end forecast. Fractions of the limit;
/// anything past 100 % is drawn at the end.
pub fn progress(spent: f64, reserved: f64, thresholds: &[f64], forecast: f64) -> String {
    let clamp = |f: f64| (f * 100.0).clamp(0.0, 100.0);
    let sp = clamp(spent);
    let rs = (clamp(spent + reserved) - sp).max(0.0);
    let class = if spent >= 1.0 {
        "over"
    } else if thresholds.iter().any(|t| spent >= *t) {
        "warn"
    } else {
        "good"
    };
    let mut s = String::from(
        r#"<svg class="chart progress" viewBox="0 0 100 16" preserveAspectRatio="none" role="img" aria-label="Budget used">"#,
    );
    s.push_str(r#"<defs><pattern id="hold" width="2" height="2" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="1" height="2" fill="currentColor" opacity=".45"/></pattern></defs>"#);
    s.push_str(r#"<rect class="track" x="0" y="3" width="100" height="10" rx="2"/>"#);
    let _ = write!(
        s,
        r#"<rect class="fill {class}" x="0" y="3" width="{sp:.3}" height="10" rx="2" data-fraction="{spent}"/>"#
    );
    if rs > 0.0 {
        let _ = write!(
            s,
            r#"<rect class="held" x="{sp:.3}" y="3" width="{rs:.3}" height="10" fill="url(#hold)"/>"#
        );
    }
    for t in thresholds {
        let x = clamp(*t);
        let _ = write!(
            s,
            r#"<line class="threshold" x1="{x:.3}" x2="{x:.3}" y1="0" y2="16" data-threshold="{t}"/>"#
        );
    }
    if forecast > 0.0 {
        let x = clamp(forecast);
        let _ = write!(
            s,
            r#"<line class="forecast" x1="{x:.3}" x2="{x:.3}" y1="1" y2="15"/>"#
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceiling_rounds_up() {
        assert_eq!(nice_ceiling(0.0), (1.0, 0.25));
        assert_eq!(nice_ceiling(3.7), (4.0, 1.0));
        let (c, s) = nice_ceiling(0.0123);
        assert!(c >= 0.0123 && (c / s - (c / s).round()).abs() < 1e-9);
    }

    /// Every gridline of a small-spend chart gets its own label.
    #[test]
    fn axis_labels_are_distinct_at_any_scale() {
        for max in [0.00003, 0.0005, 0.0123, 0.7, 3.7, 42.0, 1250.0, 98_765.0] {
            let (ceil, step) = nice_ceiling(max);
            let labels: Vec<String> = (0..=((ceil / step).round() as usize))
                .map(|i| axis_usd(i as f64 * step, step))
                .collect();
            let mut unique = labels.clone();
            unique.dedup();
            assert_eq!(unique, labels, "max {max}: {labels:?}");
        }
        assert_eq!(axis_usd(0.00005, 0.00001), "$0.00005");
        assert_eq!(axis_usd(0.25, 0.25), "$0.25");
        assert_eq!(axis_usd(1250.0, 250.0), "$1.25k");
        assert_eq!(axis_usd(0.0, 0.25), "$0");
    }

    #[test]
    fn labels_are_escaped() {
        let svg = stacked_bars(
            &["<d>".into()],
            &[Segment {
                slot: 0,
                series: 0,
                series_name: "<script>",
                value: 1.0,
                title: "a&b".into(),
            }],
        );
        assert!(!svg.contains("<script>") && !svg.contains("<d>"));
        assert!(svg.contains("&lt;script&gt;") && svg.contains("a&amp;b"));
        let d = donut(&[("<x>".into(), 1.0, "#000")], "1", "calls");
        assert!(d.contains("&lt;x&gt;") && !d.contains("<x>"));
    }
}
