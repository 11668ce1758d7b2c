//! The XML form of WSC'08 and WSC'09: `taxonomy.xml`, `services.xml` (or
//! `services-output.xml` with QoS attributes) and `problem.xml`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::Path;

use baton_core::{Goal, Qos, ServiceSpec, TaxonomyBuilder};
use roxmltree::Node;

use super::{
    Concepts, Error, KnownSolution, WscProblem, dedup_in_order, elements, format_error, parse, read, required, root,
    service,
};

/// Loads a problem from its three XML files; `services` may be any of `services.xml`,
/// `services-output.xml` or `services-original.xml`, e.g. a WSC'08 set's taxonomy and problem
/// with the QoS file of `wsc08/vuw-qos`.
pub fn load_xml(services: &Path, taxonomy: &Path, problem: &Path) -> Result<WscProblem, Error> {
    let texts = [read(services)?, read(taxonomy)?, read(problem)?];
    from_texts([services, taxonomy, problem], [&texts[0], &texts[1], &texts[2]])
}

/// [`load_xml`] on texts already read (errors name the files `services.xml`, `taxonomy.xml`
/// and `problem.xml`).
pub fn parse_xml(services: &str, taxonomy: &str, problem: &str) -> Result<WscProblem, Error> {
    let paths = ["services.xml", "taxonomy.xml", "problem.xml"].map(Path::new);
    from_texts(paths, [services, taxonomy, problem])
}

/// Parses the texts of `[services, taxonomy, problem]`, naming `paths` in errors.
fn from_texts(paths: [&Path; 3], texts: [&str; 3]) -> Result<WscProblem, Error> {
    let [services, taxonomy, problem] = paths;
    let concepts = parse_taxonomy(taxonomy, texts[1])?;
    let services = parse_services(services, texts[0], &concepts)?;
    let (goal, known_solution) = parse_problem(problem, texts[2], &concepts)?;
    Ok(WscProblem { taxonomy: concepts.taxonomy, services, goal, known_solution })
}

/// `<taxonomy>` of nested `<concept name>`, each holding `<instance name>` elements.
pub(super) fn parse_taxonomy(path: &Path, text: &str) -> Result<Concepts, Error> {
    let doc = parse(path, text)?;
    let root = root(path, &doc, "taxonomy")?;
    let mut builder = TaxonomyBuilder::default();
    let mut instances = Vec::new();
    // Document order (pre-order), without recursion: the tree can be deep.
    for node in root.descendants().filter(|n| n.is_element() && *n != root) {
        let tag = node.tag_name().name();
        if tag != "concept" && tag != "instance" {
            return Err(format_error(path, format!("unexpected element <{tag}>: expected <concept> or <instance>")));
        }
        let name = required(path, node, "name")?;
        let parent = node.parent_element().filter(|p| *p != root);
        let parent_name = match parent {
            Some(p) if p.has_tag_name("concept") => p.attribute("name"),
            Some(p) => {
                return Err(format_error(
                    path,
                    format!("<{tag}> {name:?} inside <{}>: only concepts hold elements", p.tag_name().name()),
                ));
            }
            None => None,
        };
        match tag {
            "concept" => {
                builder.add(name, parent_name).map_err(|source| Error::Taxonomy { path: path.to_owned(), source })?;
            }
            _ => {
                let concept = parent_name
                    .ok_or_else(|| format_error(path, format!("instance {name:?} is outside any concept")))?;
                instances.push((name, concept));
            }
        }
    }
    let taxonomy = builder.build().map_err(|source| Error::Taxonomy { path: path.to_owned(), source })?;
    let mut instance_of = HashMap::with_capacity(instances.len());
    for (instance, concept) in instances {
        let id = taxonomy
            .id(concept)
            .ok_or_else(|| format_error(path, format!("instance {instance:?} is in unknown concept {concept:?}")))?;
        match instance_of.entry(instance.to_owned()) {
            Entry::Vacant(e) => {
                e.insert(id);
            }
            Entry::Occupied(e) if *e.get() != id => {
                let first = taxonomy.name(*e.get());
                return Err(format_error(path, format!("instance {instance:?} is in both {first:?} and {concept:?}")));
            }
            Entry::Occupied(_) => {}
        }
    }
    Ok(Concepts { taxonomy, instance_of })
}

/// The concepts of the `<instance name>` (or `<concept name>`) children of `list`.
fn concepts_of(
    path: &Path,
    list: Node<'_, '_>,
    place: &dyn Fn() -> String,
    concepts: &Concepts,
) -> Result<Vec<String>, Error> {
    elements(list)
        .map(|item| {
            if !(item.has_tag_name("instance") || item.has_tag_name("concept")) {
                return Err(format_error(
                    path,
                    format!("unexpected element <{}> in {}: expected <instance>", item.tag_name().name(), place()),
                ));
            }
            concepts.of(path, place, required(path, item, "name")?)
        })
        .collect()
}

/// `<services>` of `<service name [QoS attributes]>` holding `<inputs>` and `<outputs>`.
pub(super) fn parse_services(path: &Path, text: &str, concepts: &Concepts) -> Result<Vec<ServiceSpec>, Error> {
    let doc = parse(path, text)?;
    let root = root(path, &doc, "services")?;
    let mut services = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for node in elements(root) {
        if !node.has_tag_name("service") {
            return Err(format_error(path, format!("unexpected element <{}> in <services>", node.tag_name().name())));
        }
        let name = required(path, node, "name")?;
        if !seen.insert(name) {
            return Err(format_error(path, format!("service {name:?} is defined twice")));
        }
        let qos = qos(path, name, node)?;
        let (mut inputs, mut outputs) = (None, None);
        for part in elements(node) {
            let (slot, what) = match part.tag_name().name() {
                "inputs" => (&mut inputs, "an input"),
                "outputs" => (&mut outputs, "an output"),
                other => {
                    return Err(format_error(path, format!("unexpected element <{other}> in service {name:?}")));
                }
            };
            if slot.is_some() {
                return Err(format_error(path, format!("service {name:?} has two <{}>", part.tag_name().name())));
            }
            *slot = Some(concepts_of(path, part, &|| format!("{what} of service {name:?}"), concepts)?);
        }
        services.push(service(path, name, inputs.unwrap_or_default(), outputs.unwrap_or_default(), qos)?);
    }
    Ok(services)
}

/// The QoS attributes of a `<service>`; see the module docs for the mapping.
fn qos(path: &Path, service: &str, node: Node<'_, '_>) -> Result<Qos, Error> {
    let number = |attribute: &str| -> Result<Option<f64>, Error> {
        let Some(text) = node.attribute(attribute) else { return Ok(None) };
        text.trim().parse::<f64>().map(Some).map_err(|_| {
            format_error(path, format!("service {service:?}: attribute {attribute}={text:?} is not a number"))
        })
    };
    let mut qos = Qos::default();
    if let Some(ms) = number("Res")? {
        qos.latency_p50_ms = ms;
        qos.latency_p99_ms = ms;
    }
    if let Some(price) = number("Pri")? {
        qos.cost = price;
    }
    let availability = match number("Ava")? {
        Some(a) => Some(("Ava", a)),
        None => number("Rel")?.map(|r| ("Rel", r)),
    };
    if let Some((attribute, value)) = availability {
        qos.availability = match value {
            v if v <= 1.0 => v,
            v if v <= 100.0 => v / 100.0,
            v => {
                return Err(format_error(
                    path,
                    format!("service {service:?}: attribute {attribute}={v} is neither a fraction nor a percentage"),
                ));
            }
        };
    }
    Ok(qos)
}

/// The one child `<{tag}>` of `node`.
fn child<'a, 'i>(path: &Path, node: Node<'a, 'i>, tag: &str) -> Result<Node<'a, 'i>, Error> {
    let mut found = elements(node).filter(|n| n.has_tag_name(tag));
    match (found.next(), found.next()) {
        (Some(child), None) => Ok(child),
        (None, _) => Err(format_error(path, format!("<{}> without a <{tag}>", node.tag_name().name()))),
        (Some(_), Some(_)) => Err(format_error(path, format!("<{}> has two <{tag}>", node.tag_name().name()))),
    }
}

/// `<problemStructure>`: `<task>` with `<provided>` and `<wanted>` instances, then optional
/// `<solutions>`.
pub(super) fn parse_problem(
    path: &Path,
    text: &str,
    concepts: &Concepts,
) -> Result<(Goal, Option<KnownSolution>), Error> {
    let doc = parse(path, text)?;
    let root = root(path, &doc, "problemStructure")?;
    let task = child(path, root, "task")?;
    let provided = concepts_of(path, child(path, task, "provided")?, &|| "a provided value".to_owned(), concepts)?;
    let wanted = concepts_of(path, child(path, task, "wanted")?, &|| "a wanted value".to_owned(), concepts)?;
    let goal = Goal { provided: dedup_in_order(provided), wanted: dedup_in_order(wanted), ..Goal::default() };

    let mut best: Option<KnownSolution> = None;
    if let Some(solutions) = elements(root).find(|n| n.has_tag_name("solutions")) {
        for solution in elements(solutions) {
            if !solution.has_tag_name("solution") {
                return Err(format_error(
                    path,
                    format!("unexpected element <{}> in <solutions>", solution.tag_name().name()),
                ));
            }
            let layers = solution_layers(path, solution, 0)?;
            let key = |l: &KnownSolution| (l.len(), l.iter().map(Vec::len).sum::<usize>());
            if best.as_ref().is_none_or(|b| key(&layers) < key(b)) {
                best = Some(layers);
            }
        }
    }
    Ok((goal, best))
}

/// Deepest nesting of `<sequence>` and `<parallel>` accepted in a solution (the sets nest 7
/// deep); bounds the recursion on hostile input.
const MAX_NESTING: usize = 256;

/// The layers of a solution tree: see [`WscProblem::known_solution`].
fn solution_layers(path: &Path, node: Node<'_, '_>, depth: usize) -> Result<KnownSolution, Error> {
    if depth > MAX_NESTING {
        return Err(format_error(path, format!("a solution nests deeper than {MAX_NESTING} levels")));
    }
    match node.tag_name().name() {
        "serviceDesc" => {
            let realizations = child(path, node, "realizations")?;
            let names = elements(realizations)
                .map(|s| {
                    if s.has_tag_name("service") {
                        required(path, s, "name").map(str::to_owned)
                    } else {
                        Err(format_error(
                            path,
                            format!("unexpected element <{}> in <realizations>", s.tag_name().name()),
                        ))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            if names.is_empty() {
                return Err(format_error(path, "<realizations> without a <service>"));
            }
            Ok(vec![vec![names]])
        }
        "solution" | "sequence" => {
            let mut layers = Vec::new();
            for part in elements(node) {
                layers.extend(solution_layers(path, part, depth + 1)?);
            }
            Ok(layers)
        }
        "parallel" => {
            let mut layers: KnownSolution = Vec::new();
            for branch in elements(node) {
                let branch = solution_layers(path, branch, depth + 1)?;
                if layers.len() < branch.len() {
                    layers.resize_with(branch.len(), Vec::new);
                }
                for (layer, steps) in layers.iter_mut().zip(branch) {
                    layer.extend(steps);
                }
            }
            Ok(layers)
        }
        other => Err(format_error(path, format!("unexpected element <{other}> in a solution"))),
    }
}
