//! The report's timeline: one lane per audience, with what happened on it (updates
//! published, first deliveries, notices still pending, deadlines), drawn as an
//! inline SVG.
//!
//! Readable whatever the spacing: axis ticks fall on round times (every 5 s, 1 min,
//! 15 min…) chosen for the span, so no two ticks carry the same label, and labels of
//! marks close together go to the next free row, or are left to the mark's tooltip
//! when no row has room, never drawn over each other. Takes plain marks, knows
//! nothing of the ledger; every text is escaped.

use clarion_render::html_escape;
use std::fmt::Write as _;

/// One audience's lane.
#[derive(Debug, Clone)]
pub struct Lane {
    pub audience: String,
    pub marks: Vec<Mark>,
}

/// Something on a lane. `title` is the tooltip.
#[derive(Debug, Clone)]
pub enum Mark {
    /// An update published (grey circle), labelled above the lane.
    Published {
        at: jiff::Timestamp,
        label: String,
        title: String,
    },
    /// An update's first successful delivery (green diamond), joined to its
    /// publication.
    Delivered {
        from: jiff::Timestamp,
        at: jiff::Timestamp,
        title: String,
    },
    /// An update not delivered yet to this audience (amber ring at the time of the
    /// report, dashed from its publication).
    Pending {
        from: jiff::Timestamp,
        at: jiff::Timestamp,
        title: String,
    },
    /// A deadline (dashed line: green when met, red otherwise), labelled below.
    Deadline {
        at: jiff::Timestamp,
        met: bool,
        label: String,
        title: String,
    },
}

impl Mark {
    fn times(&self) -> [jiff::Timestamp; 2] {
        match self {
            Mark::Published { at, .. } | Mark::Deadline { at, .. } => [*at, *at],
            Mark::Delivered { from, at, .. } | Mark::Pending { from, at, .. } => [*from, *at],
        }
    }
}

const LEFT: f64 = 130.0;
const WIDTH: f64 = 1000.0;
const RIGHT: f64 = 20.0;
const LANE: f64 = 78.0;
const TOP: f64 = 34.0;
/// Rows of labels above a lane (updates) and below it (deadlines).
const ROWS_ABOVE: usize = 3;
const ROWS_BELOW: usize = 2;
/// An estimate of one character's width at the page's 11 px font.
const CHAR_PX: f64 = 6.4;

/// Round steps for the axis, in seconds.
const STEPS: [i64; 20] = [
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400,
    172_800, 604_800,
];
/// At most this many ticks.
const MAX_TICKS: i64 = 6;

/// The axis: tick times and their labels, distinct.
pub fn ticks(t0: jiff::Timestamp, t1: jiff::Timestamp) -> Vec<(jiff::Timestamp, String)> {
    let (a, b) = (t0.as_second(), t1.as_second().max(t0.as_second()));
    let span = b - a;
    let step = STEPS
        .iter()
        .copied()
        .find(|s| span / s < MAX_TICKS)
        .unwrap_or(STEPS[STEPS.len() - 1]);
    let format = if span > 86_400 {
        if step >= 86_400 {
            "%m-%d"
        } else {
            "%m-%d %H:%M"
        }
    } else if step >= 60 {
        "%H:%M"
    } else {
        "%H:%M:%S"
    };
    let mut out: Vec<(jiff::Timestamp, String)> = Vec::new();
    let mut t = a.div_euclid(step) * step;
    if t < a {
        t += step;
    }
    while t <= b {
        if let Ok(ts) = jiff::Timestamp::from_second(t) {
            let label = ts.strftime(format).to_string();
            if out.last().is_none_or(|(_, l)| *l != label) {
                out.push((ts, label));
            }
        }
        t += step;
    }
    if out.is_empty() {
        out.push((t0, t0.strftime("%H:%M:%S").to_string()));
    }
    out
}

/// Places labels (centre x, text) in `rows` rows without overlap: each goes to the
/// first row where it fits after the labels already there, or nowhere (its mark's
/// tooltip still has it). Returns the row of each, in the order given.
pub fn place(labels: &[(f64, &str)], rows: usize) -> Vec<Option<usize>> {
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by(|a, b| labels[*a].0.total_cmp(&labels[*b].0));
    let mut right_edge = vec![f64::MIN; rows];
    let mut out = vec![None; labels.len()];
    for i in order {
        let (x, text) = labels[i];
        let half = text.chars().count() as f64 * CHAR_PX / 2.0 + 3.0;
        if let Some(row) = (0..rows).find(|r| right_edge[*r] <= x - half) {
            right_edge[row] = x + half;
            out[i] = Some(row);
        }
    }
    out
}

/// The SVG of `lanes` for incident `incident`.
pub fn svg(incident: &str, lanes: &[Lane]) -> String {
    let times: Vec<jiff::Timestamp> = lanes
        .iter()
        .flat_map(|l| l.marks.iter().flat_map(Mark::times))
        .collect();
    let (Some(t0), Some(t1)) = (times.iter().min().copied(), times.iter().max().copied()) else {
        return "<p>No notices recorded.</p>".to_string();
    };
    let span = (t1.as_millisecond() - t0.as_millisecond()).max(1) as f64;
    let x = |t: jiff::Timestamp| {
        LEFT + (t.as_millisecond() - t0.as_millisecond()) as f64 / span * (WIDTH - LEFT - RIGHT)
    };
    // Keeps a label's text inside the drawing.
    let clamp = |px: f64, text: &str| {
        let half = text.chars().count() as f64 * CHAR_PX / 2.0;
        px.clamp(LEFT + half, WIDTH - RIGHT - half)
    };
    let height = TOP + LANE * lanes.len() as f64 + 30.0;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg id=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-label=\"Notification timeline of incident {}\">",
        html_escape(incident)
    );
    for (t, label) in ticks(t0, t1) {
        let px = x(t);
        let _ = write!(
            s,
            "<line x1=\"{px:.1}\" y1=\"{}\" x2=\"{px:.1}\" y2=\"{}\" stroke=\"#e5e7eb\"/>\
             <text class=\"tick\" x=\"{tx:.1}\" y=\"16\" text-anchor=\"middle\">{}</text>",
            TOP - 8.0,
            height - 24.0,
            html_escape(&label),
            tx = clamp(px, &label),
        );
    }
    for (i, lane) in lanes.iter().enumerate() {
        let y = TOP + LANE * i as f64 + LANE / 2.0;
        let _ = write!(
            s,
            "<g class=\"lane\" data-audience=\"{aud}\"><text x=\"8\" y=\"{ty:.1}\" font-weight=\"600\">{aud}</text>\
             <line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{x2}\" y2=\"{y:.1}\" stroke=\"#cbd5e1\" stroke-width=\"2\"/>",
            aud = html_escape(&lane.audience),
            ty = y + 4.0,
            x2 = WIDTH - RIGHT,
        );
        let above: Vec<(f64, &str)> = lane
            .marks
            .iter()
            .filter_map(|m| match m {
                Mark::Published { at, label, .. } => Some((x(*at), label.as_str())),
                _ => None,
            })
            .collect();
        let below: Vec<(f64, &str)> = lane
            .marks
            .iter()
            .filter_map(|m| match m {
                Mark::Deadline { at, label, .. } => Some((x(*at), label.as_str())),
                _ => None,
            })
            .collect();
        let mut rows_above = place(&above, ROWS_ABOVE).into_iter();
        let mut rows_below = place(&below, ROWS_BELOW).into_iter();
        // Lines first, then marks over them.
        for m in &lane.marks {
            match m {
                Mark::Delivered { from, at, .. } => {
                    let _ = write!(
                        s,
                        "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#17803d\" stroke-width=\"3\" opacity=\"0.5\"/>",
                        x(*from),
                        x(*at)
                    );
                }
                Mark::Pending { from, at, .. } => {
                    let _ = write!(
                        s,
                        "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#b45309\" stroke-width=\"3\" stroke-dasharray=\"5 4\" opacity=\"0.6\"/>",
                        x(*from),
                        x(*at)
                    );
                }
                _ => {}
            }
        }
        for m in &lane.marks {
            match m {
                Mark::Published { at, label, title } => {
                    let px = x(*at);
                    let _ = write!(
                        s,
                        "<circle class=\"published\" cx=\"{px:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"#64748b\"><title>{}</title></circle>",
                        html_escape(title)
                    );
                    if let Some(Some(row)) = rows_above.next() {
                        let _ = write!(
                            s,
                            "<text class=\"label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                            clamp(px, label),
                            y - 10.0 - 11.0 * row as f64,
                            html_escape(label)
                        );
                    }
                }
                Mark::Delivered { at, title, .. } => {
                    let dx = x(*at);
                    let _ = write!(
                        s,
                        "<path class=\"delivered\" d=\"M{dx:.1} {a:.1} L{r:.1} {y:.1} L{dx:.1} {b:.1} L{l:.1} {y:.1} Z\" fill=\"#17803d\"><title>{t}</title></path>",
                        a = y - 6.0,
                        b = y + 6.0,
                        r = dx + 6.0,
                        l = dx - 6.0,
                        t = html_escape(title),
                    );
                }
                Mark::Pending { at, title, .. } => {
                    let _ = write!(
                        s,
                        "<circle class=\"pending\" cx=\"{:.1}\" cy=\"{y:.1}\" r=\"6\" fill=\"#fff\" stroke=\"#b45309\" stroke-width=\"2.5\"><title>{}</title></circle>",
                        x(*at),
                        html_escape(title)
                    );
                }
                Mark::Deadline {
                    at,
                    met,
                    label,
                    title,
                } => {
                    let dx = x(*at);
                    let color = if *met { "#17803d" } else { "#b42318" };
                    let _ = write!(
                        s,
                        "<line class=\"deadline\" x1=\"{dx:.1}\" y1=\"{a:.1}\" x2=\"{dx:.1}\" y2=\"{b:.1}\" stroke=\"{color}\" stroke-width=\"2\" stroke-dasharray=\"4 3\"><title>{t}</title></line>",
                        a = y - 18.0,
                        b = y + 14.0,
                        t = html_escape(title),
                    );
                    if let Some(Some(row)) = rows_below.next() {
                        let _ = write!(
                            s,
                            "<text class=\"label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"{color}\">{}</text>",
                            clamp(dx, label),
                            y + 25.0 + 11.0 * row as f64,
                            html_escape(label)
                        );
                    }
                }
            }
        }
        s.push_str("</g>");
    }
    let _ = write!(
        s,
        "<text x=\"{LEFT}\" y=\"{ly:.1}\">● update published   ◆ first successful delivery   ○ not delivered yet   ┆ deadline</text></svg>",
        ly = height - 6.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + s).expect("time")
    }

    #[test]
    fn ticks_are_round_and_never_repeat_a_label() {
        // Three seconds apart on a long day: the old axis printed 06:45:48 twice.
        for (span, step) in [
            (2, 1),
            (25, 5),
            (600, 120),
            (5400, 1800),
            (3 * 86_400, 86_400),
        ] {
            let t = ticks(at(0), at(span));
            let labels: Vec<&String> = t.iter().map(|(_, l)| l).collect();
            let distinct: std::collections::BTreeSet<&&String> = labels.iter().collect();
            assert_eq!(distinct.len(), labels.len(), "{span}: {labels:?}");
            assert!(t.len() as i64 <= MAX_TICKS, "{span}: {labels:?}");
            for w in t.windows(2) {
                assert_eq!(w[1].0.as_second() - w[0].0.as_second(), step, "{span}");
            }
        }
    }

    #[test]
    fn labels_close_together_take_the_next_row_or_none() {
        // Three labels on one spot, one far away: rows 0, 1, 2, then row 0 again.
        let labels = [
            (200.0, "#1 investigating"),
            (201.0, "#2 identified"),
            (202.0, "#3 monitoring"),
            (800.0, "#4 resolved"),
        ];
        assert_eq!(place(&labels, 3), vec![Some(0), Some(1), Some(2), Some(0)]);
        // A fourth on the same spot has no row: it is left to the tooltip.
        let crowded = [
            (200.0, "#1 a"),
            (200.0, "#2 b"),
            (200.0, "#3 c"),
            (200.0, "#4 d"),
        ];
        assert_eq!(place(&crowded, 3), vec![Some(0), Some(1), Some(2), None]);
    }

    #[test]
    fn the_svg_escapes_and_draws_a_pending_mark() {
        let lanes = vec![Lane {
            audience: "<regs>".into(),
            marks: vec![
                Mark::Published {
                    at: at(0),
                    label: "#1 investigating".into(),
                    title: "#1 published".into(),
                },
                Mark::Pending {
                    from: at(0),
                    at: at(60),
                    title: "not delivered yet".into(),
                },
            ],
        }];
        let svg = svg("INC&1", &lanes);
        assert!(svg.contains("&lt;regs&gt;") && !svg.contains("<regs>"));
        assert!(svg.contains("INC&amp;1"));
        assert!(svg.contains("class=\"pending\""));
    }
}
