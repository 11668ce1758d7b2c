//! Graphs of steps drawn as SVG: a layered layout computed here, so the browser only paints.
//!
//! A workflow's steps and a plan's tasks are both a [`Graph`]: nodes with an optional state
//! (coloured by CSS class), dependency and data edges, and levels from left to right (given
//! for plans, the longest path from a root for workflows). Within a level, nodes are ordered
//! by the barycentre of their neighbours, a few sweeps each way, which keeps edges short and
//! crossings few for the DAGs workflows have. [`NodeKind`] draws control-flow constructs
//! as their own shapes, with the steps nested in them linked by containment edges.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use maud::{Markup, PreEscaped, html};

/// Horizontal distance between levels.
const COLUMN: f64 = 210.0;
/// Vertical distance between nodes of a level.
const ROW: f64 = 64.0;
const NODE_WIDTH: f64 = 168.0;
const NODE_HEIGHT: f64 = 44.0;
const MARGIN: f64 = 16.0;
/// Labels longer than this are cut (the whole text is in the node's tooltip).
const LABEL_CHARS: usize = 22;
/// Barycentre sweeps, down and up.
const SWEEPS: usize = 4;

/// What a node stands for; each kind has its shape (a CSS class `kind-<name>` and a glyph
/// before its label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A workflow step or plan task: a call of one service.
    Call,
    /// `set`: a value computed in place.
    Set,
    /// `steps`: a nested block.
    Block,
    /// `switch`: a branch on data.
    Switch,
    /// `for`, `while`, `until`.
    Loop,
    /// `fork`: branches in parallel.
    Fork,
    /// `try` with `catch`.
    Try,
    /// `raise`: a typed error.
    Raise,
    /// `wait`: a durable timer.
    Wait,
    /// `listen`: waits for a signal.
    Listen,
    /// `emit`: publishes an event.
    Emit,
    /// `workflow`: a child execution.
    Workflow,
}

impl NodeKind {
    /// The kind's name, as in the workflow format.
    pub fn name(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Set => "set",
            Self::Block => "steps",
            Self::Switch => "switch",
            Self::Loop => "loop",
            Self::Fork => "fork",
            Self::Try => "try",
            Self::Raise => "raise",
            Self::Wait => "wait",
            Self::Listen => "listen",
            Self::Emit => "emit",
            Self::Workflow => "workflow",
        }
    }

    /// Drawn before the label so that the kind reads without colour.
    fn glyph(self) -> &'static str {
        match self {
            Self::Call => "",
            Self::Set => "= ",
            Self::Block => "▤ ",
            Self::Switch => "◇ ",
            Self::Loop => "↻ ",
            Self::Fork => "⑂ ",
            Self::Try => "⚑ ",
            Self::Raise => "✕ ",
            Self::Wait => "◷ ",
            Self::Listen => "✉ ",
            Self::Emit => "↗ ",
            Self::Workflow => "⧉ ",
        }
    }
}

/// One node.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Unique within the graph: the step id.
    pub id: String,
    /// The second line: the service or capability.
    pub detail: String,
    /// A state, drawn as the CSS class `state-<state>`; `None` for a definition.
    pub state: Option<String>,
    /// What it is.
    pub kind: NodeKind,
}

/// Why one node waits for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EdgeKind {
    /// Listed in `depends_on`.
    Dependency,
    /// The node reads the other's output.
    Data,
    /// The node is a step nested in the other (a block, case, branch or loop body).
    Contains,
}

/// A graph to lay out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    /// The nodes, in definition order.
    pub nodes: Vec<Node>,
    /// `(from, to, kind)` by node index; `to` runs after `from`.
    pub edges: Vec<(usize, usize, EdgeKind)>,
    /// The level of each node when known (plans); computed when `None`.
    pub levels: Option<Vec<usize>>,
}

/// Where each node goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Level (column) of each node.
    pub level: Vec<usize>,
    /// Row within its level.
    pub row: Vec<usize>,
}

impl Graph {
    /// Adds an edge by node ids; unknown ids and self loops are ignored, a repeated pair keeps
    /// the dependency kind.
    pub fn connect(&mut self, from: &str, to: &str, kind: EdgeKind) {
        let find = |id: &str| self.nodes.iter().position(|n| n.id == id);
        if let (Some(from), Some(to)) = (find(from), find(to))
            && from != to
        {
            match self.edges.iter_mut().find(|(f, t, _)| *f == from && *t == to) {
                Some(edge) => edge.2 = edge.2.min(kind),
                None => self.edges.push((from, to, kind)),
            }
        }
    }

    /// Levels (longest path from a root, or as given) and rows (barycentre order).
    pub fn layout(&self) -> Layout {
        let n = self.nodes.len();
        let level = match &self.levels {
            Some(levels) if levels.len() == n => levels.clone(),
            _ => longest_path_levels(n, &self.edges),
        };
        let columns = level.iter().copied().max().map_or(0, |m| m + 1);
        let mut order: Vec<Vec<usize>> = vec![Vec::new(); columns];
        for (node, &l) in level.iter().enumerate() {
            order[l].push(node);
        }
        let mut row = vec![0usize; n];
        let place = |order: &Vec<Vec<usize>>, row: &mut Vec<usize>| {
            for nodes in order {
                for (r, &node) in nodes.iter().enumerate() {
                    row[node] = r;
                }
            }
        };
        place(&order, &mut row);
        for sweep in 0..SWEEPS {
            let down = sweep % 2 == 0;
            let columns: Vec<usize> =
                if down { (1..columns).collect() } else { (0..columns.saturating_sub(1)).rev().collect() };
            for column in columns {
                let mut keyed: Vec<(f64, usize, usize)> = order[column]
                    .iter()
                    .map(|&node| {
                        let neighbours: Vec<usize> = self
                            .edges
                            .iter()
                            .filter_map(|&(from, to, _)| match down {
                                true if to == node => Some(from),
                                false if from == node => Some(to),
                                _ => None,
                            })
                            .collect();
                        let centre = if neighbours.is_empty() {
                            row[node] as f64
                        } else {
                            neighbours.iter().map(|&m| row[m] as f64).sum::<f64>() / neighbours.len() as f64
                        };
                        (centre, row[node], node)
                    })
                    .collect();
                keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                order[column] = keyed.into_iter().map(|(_, _, node)| node).collect();
                place(&order, &mut row);
            }
        }
        Layout { level, row }
    }

    /// The graph as an inline SVG; `href` gives a node's link, if any.
    pub fn svg(&self, label: &str, href: &dyn Fn(&Node) -> Option<String>) -> Markup {
        let layout = self.layout();
        let columns = layout.level.iter().copied().max().map_or(1, |m| m + 1);
        let mut per_level: BTreeMap<usize, usize> = BTreeMap::new();
        for &l in &layout.level {
            *per_level.entry(l).or_default() += 1;
        }
        let rows = per_level.values().copied().max().unwrap_or(1);
        let width = MARGIN * 2.0 + (columns - 1) as f64 * COLUMN + NODE_WIDTH;
        let height = MARGIN * 2.0 + (rows - 1) as f64 * ROW + NODE_HEIGHT;
        // Levels with fewer nodes are centred vertically.
        let position = |node: usize| {
            let l = layout.level[node];
            let offset = (rows - per_level[&l]) as f64 * ROW / 2.0;
            (MARGIN + l as f64 * COLUMN, MARGIN + offset + layout.row[node] as f64 * ROW)
        };
        let mut edges = String::new();
        for &(from, to, kind) in &self.edges {
            let (fx, fy) = position(from);
            let (tx, ty) = position(to);
            let (x1, y1) = (fx + NODE_WIDTH, fy + NODE_HEIGHT / 2.0);
            let (x2, y2) = (tx - 6.0, ty + NODE_HEIGHT / 2.0);
            let bend = ((x2 - x1) / 2.0).max(24.0);
            let class = match kind {
                EdgeKind::Dependency => "edge",
                EdgeKind::Data => "edge edge-data",
                EdgeKind::Contains => "edge edge-contains",
            };
            let _ = write!(
                edges,
                r#"<path class="{class}" marker-end="url(#arrow)" d="M{x1:.1} {y1:.1} C{:.1} {y1:.1} {:.1} {y2:.1} {x2:.1} {y2:.1}"/>"#,
                x1 + bend,
                x2 - bend
            );
        }
        html! {
            svg.graph xmlns="http://www.w3.org/2000/svg" role="group" aria-label=(label)
                viewBox=(format!("0 0 {width:.0} {height:.0}")) width=(format!("{width:.0}")) height=(format!("{height:.0}")) {
                defs {
                    marker #arrow viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse" {
                        path.arrow d="M0 0 L10 5 L0 10 z" {}
                    }
                }
                // Coordinates only: every text is in the nodes below, escaped.
                (PreEscaped(edges))
                @for (index, node) in self.nodes.iter().enumerate() {
                    @let (x, y) = position(index);
                    @let class = match &node.state {
                        Some(state) => format!("node kind-{} state-{state}", node.kind.name()),
                        None => format!("node kind-{}", node.kind.name()),
                    };
                    @let tip = match &node.state {
                        Some(state) => format!("{} ({}): {state}", node.id, node.detail),
                        None => format!("{} ({})", node.id, node.detail),
                    };
                    @let body = html! {
                        title { (tip) }
                        rect x=(format!("{x:.1}")) y=(format!("{y:.1}")) width=(NODE_WIDTH) height=(NODE_HEIGHT) rx=(if node.kind == NodeKind::Call { "6" } else { "16" }) {}
                        text.node-label x=(format!("{:.1}", x + 10.0)) y=(format!("{:.1}", y + 19.0)) { (node.kind.glyph()) (cut(&node.id)) }
                        text.node-detail x=(format!("{:.1}", x + 10.0)) y=(format!("{:.1}", y + 35.0)) { (cut(&node.detail)) }
                    };
                    @match href(node) {
                        Some(link) => a href=(link) { g class=(class) data-node=(node.id) data-state=[node.state.as_deref()] { (body) } },
                        None => g class=(class) data-node=(node.id) data-state=[node.state.as_deref()] tabindex="0" { (body) },
                    }
                }
            }
        }
    }
}

/// `text` cut to [`LABEL_CHARS`] characters with an ellipsis.
fn cut(text: &str) -> String {
    if text.chars().count() <= LABEL_CHARS {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(LABEL_CHARS - 1).collect();
        cut.push('…');
        cut
    }
}

/// Each node's longest distance from a root; nodes on a cycle (which checked definitions never
/// have) go one level past the rest rather than looping.
fn longest_path_levels(n: usize, edges: &[(usize, usize, EdgeKind)]) -> Vec<usize> {
    let mut incoming = vec![0usize; n];
    let mut outgoing: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(from, to, _) in edges {
        incoming[to] += 1;
        outgoing[from].push(to);
    }
    let mut level = vec![0usize; n];
    let mut ready: Vec<usize> = (0..n).filter(|&i| incoming[i] == 0).collect();
    let mut done = vec![false; n];
    while let Some(node) = ready.pop() {
        done[node] = true;
        for &next in &outgoing[node] {
            level[next] = level[next].max(level[node] + 1);
            incoming[next] -= 1;
            if incoming[next] == 0 {
                ready.push(next);
            }
        }
    }
    let past = level.iter().copied().max().map_or(0, |m| m + 1);
    for (node, finished) in done.iter().enumerate() {
        if !finished {
            level[node] = past;
        }
    }
    level
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(ids: &[&str], edges: &[(&str, &str)]) -> Graph {
        let nodes = ids
            .iter()
            .map(|id| Node { id: (*id).to_owned(), detail: "svc".to_owned(), state: None, kind: NodeKind::Call })
            .collect();
        let mut graph = Graph { nodes, ..Graph::default() };
        for (from, to) in edges {
            graph.connect(from, to, EdgeKind::Dependency);
        }
        graph
    }

    #[test]
    fn levels_are_the_longest_path_from_a_root() {
        let g = graph(&["a", "b", "c", "d"], &[("a", "b"), ("b", "d"), ("a", "d"), ("c", "d")]);
        assert_eq!(g.layout().level, [0, 1, 0, 2]);
        let cyclic = graph(&["a", "b", "c"], &[("a", "b"), ("b", "c"), ("c", "b")]);
        assert_eq!(cyclic.layout().level, [0, 2, 2]);
    }

    #[test]
    fn rows_follow_the_parents_to_avoid_crossings() {
        // x feeds q and y feeds p: after the sweeps p sits beside y and q beside x.
        let g = graph(&["x", "y", "p", "q"], &[("y", "p"), ("x", "q")]);
        let layout = g.layout();
        assert_eq!(layout.row[2], layout.row[1]);
        assert_eq!(layout.row[3], layout.row[0]);
    }

    #[test]
    fn given_levels_are_kept_and_edges_deduplicated() {
        let mut g = graph(&["a", "b"], &[("a", "b")]);
        g.connect("a", "b", EdgeKind::Data);
        g.connect("a", "a", EdgeKind::Data);
        g.connect("a", "ghost", EdgeKind::Data);
        assert_eq!(g.edges, [(0, 1, EdgeKind::Dependency)]);
        g.levels = Some(vec![0, 3]);
        assert_eq!(g.layout().level, [0, 3]);
    }

    #[test]
    fn the_svg_escapes_labels_and_carries_states() {
        let mut g = graph(&["a"], &[]);
        g.nodes[0].detail = "<img src=x onerror=alert(1)>".to_owned();
        g.nodes[0].state = Some("succeeded".to_owned());
        let svg = g.svg("steps", &|_| None).into_string();
        assert!(svg.contains(r#"class="node kind-call state-succeeded""#), "{svg}");
        assert!(svg.contains("&lt;img src=x"), "{svg}");
        assert!(!svg.contains("<img"), "{svg}");
    }
}
