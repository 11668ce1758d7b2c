//! The original WSC'09 form: `Taxonomy.owl` (OWL classes and individuals), `Services.wsdl` and
//! `Challenge.wsdl` (WSDL with the MECE semantic extension), `Servicelevelagreements.wsla`.
//!
//! Elements and attributes are matched by local name whatever their namespace:
//! `Services.wsdl` of the example set has no default namespace while `Challenge.wsdl` has one.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::Path;

use baton_core::{Goal, Qos, TaxonomyBuilder};

use super::{
    Concepts, Error, WscProblem, dedup_in_order, elements, format_error, parse, present, read, required, root, service,
};

/// Loads the original WSC'09 form from `dir`: `Taxonomy.owl`, `Services.wsdl`,
/// `Challenge.wsdl` (the task) and, when present, `Servicelevelagreements.wsla` (QoS).
pub fn load_wsdl(dir: &Path) -> Result<WscProblem, Error> {
    let owl = dir.join("Taxonomy.owl");
    let wsla = dir.join("Servicelevelagreements.wsla");
    let services = dir.join("Services.wsdl");
    let challenge = dir.join("Challenge.wsdl");
    let wsla_text = if present(&wsla) { Some(read(&wsla)?) } else { None };
    let texts = [read(&owl)?, read(&services)?, read(&challenge)?];
    let paths = Paths { owl: &owl, services: &services, challenge: &challenge, wsla: &wsla };
    from_texts(&paths, [&texts[0], &texts[1], &texts[2]], wsla_text.as_deref())
}

/// [`load_wsdl`] on texts already read: `Taxonomy.owl`, `Services.wsdl`, `Challenge.wsdl` and
/// optionally `Servicelevelagreements.wsla` (errors name the files by these names).
pub fn parse_wsdl(owl: &str, services: &str, challenge: &str, wsla: Option<&str>) -> Result<WscProblem, Error> {
    let paths = Paths {
        owl: Path::new("Taxonomy.owl"),
        services: Path::new("Services.wsdl"),
        challenge: Path::new("Challenge.wsdl"),
        wsla: Path::new("Servicelevelagreements.wsla"),
    };
    from_texts(&paths, [owl, services, challenge], wsla)
}

/// The names errors give the four files.
struct Paths<'a> {
    owl: &'a Path,
    services: &'a Path,
    challenge: &'a Path,
    wsla: &'a Path,
}

/// Parses the texts of `[owl, services, challenge]` and the optional WSLA.
fn from_texts(paths: &Paths<'_>, texts: [&str; 3], wsla: Option<&str>) -> Result<WscProblem, Error> {
    let concepts = parse_owl(paths.owl, texts[0])?;
    let qos = match wsla {
        Some(text) => parse_wsla(paths.wsla, text)?,
        None => HashMap::new(),
    };

    let path = paths.services;
    let mut services = Vec::new();
    for (name, inputs, outputs) in parse_messages(path, texts[1], &concepts)? {
        let qos = qos.get(&name).copied().unwrap_or_default();
        services.push(service(path, &name, inputs, outputs, qos)?);
    }

    let path = paths.challenge;
    let mut tasks = parse_messages(path, texts[2], &concepts)?;
    // parse_messages refuses a file without messages, so there is at least one.
    let (Some((_, provided, wanted)), None) = (tasks.pop(), tasks.pop()) else {
        return Err(format_error(path, "describes several tasks, expected one"));
    };
    let goal = Goal { provided: dedup_in_order(provided), wanted: dedup_in_order(wanted), ..Goal::default() };
    Ok(WscProblem { taxonomy: concepts.taxonomy, services, goal, known_solution: None })
}

/// The part after `#` of an RDF reference (`#con1` or `http://...#inst2`).
fn fragment(reference: &str) -> &str {
    reference.rsplit_once('#').map_or(reference, |(_, name)| name)
}

/// `<rdf:RDF>` of `<owl:Class rdf:ID>` with at most one `<rdfs:subClassOf rdf:resource>`, and
/// individuals (`<owl:Thing rdf:ID>`, or any other element with an `rdf:ID`) with one
/// `<rdf:type rdf:resource>`.
pub(super) fn parse_owl(path: &Path, text: &str) -> Result<Concepts, Error> {
    let doc = parse(path, text)?;
    let root = root(path, &doc, "RDF")?;
    let mut builder = TaxonomyBuilder::default();
    let mut instances = Vec::new();
    for node in elements(root) {
        let tag = node.tag_name().name();
        if tag == "Ontology" {
            continue;
        }
        let id = required(path, node, "ID")?;
        // The single reference of the child `<{child}>`, if any.
        let reference = |child: &str| -> Result<Option<&str>, Error> {
            let mut found = elements(node).filter(|c| c.tag_name().name() == child);
            match (found.next(), found.next()) {
                (None, _) => Ok(None),
                (Some(c), None) => Ok(Some(fragment(required(path, c, "resource")?))),
                (Some(_), Some(_)) => Err(format_error(path, format!("<{tag}> {id:?} has more than one <{child}>"))),
            }
        };
        if tag == "Class" {
            builder
                .add(id, reference("subClassOf")?)
                .map_err(|source| Error::Taxonomy { path: path.to_owned(), source })?;
        } else {
            let concept =
                reference("type")?.ok_or_else(|| format_error(path, format!("individual {id:?} has no rdf:type")))?;
            instances.push((id, concept));
        }
    }
    // Classes may come after the individuals and subclasses that name them: resolve at the end.
    let taxonomy = builder.build().map_err(|source| Error::Taxonomy { path: path.to_owned(), source })?;
    let mut instance_of = HashMap::with_capacity(instances.len());
    for (instance, concept) in instances {
        let id = taxonomy
            .id(concept)
            .ok_or_else(|| format_error(path, format!("individual {instance:?} has unknown rdf:type {concept:?}")))?;
        if instance_of.insert(instance.to_owned(), id).is_some() {
            return Err(format_error(path, format!("individual {instance:?} is defined twice")));
        }
    }
    Ok(Concepts { taxonomy, instance_of })
}

/// Name, input concepts and output concepts of a service (or the task).
type Interface = (String, Vec<String>, Vec<String>);

/// The inputs and outputs of each service of a WSDL file, in file order, from its MECE
/// semantic extension: `<semMessageExt id="{service}RequestMessage">` lists the inputs'
/// `<ontologyRef>` and `...ResponseMessage` the outputs'.
pub(super) fn parse_messages(path: &Path, text: &str, concepts: &Concepts) -> Result<Vec<Interface>, Error> {
    let doc = parse(path, text)?;
    let root = root(path, &doc, "definitions")?;
    let mut services: Vec<Interface> = Vec::new();
    let mut index: HashMap<&str, (usize, [bool; 2])> = HashMap::new();
    for message in root.descendants().filter(|n| n.tag_name().name() == "semMessageExt") {
        let id = required(path, message, "id")?;
        let (name, is_input) = if let Some(name) = id.strip_suffix("RequestMessage") {
            (name, true)
        } else if let Some(name) = id.strip_suffix("ResponseMessage") {
            (name, false)
        } else {
            return Err(format_error(
                path,
                format!("message {id:?} is neither a RequestMessage nor a ResponseMessage"),
            ));
        };
        let (at, seen) = match index.entry(name) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                services.push((name.to_owned(), Vec::new(), Vec::new()));
                e.insert((services.len() - 1, [false; 2]))
            }
        };
        if std::mem::replace(&mut seen[usize::from(is_input)], true) {
            return Err(format_error(path, format!("message {id:?} is described twice")));
        }
        let what = if is_input { "an input" } else { "an output" };
        let mut found = Vec::new();
        for reference in message.descendants().filter(|n| n.tag_name().name() == "ontologyRef") {
            let instance = fragment(reference.text().unwrap_or_default().trim());
            found.push(concepts.of(path, || format!("{what} of {name:?} (message {id:?})"), instance)?);
        }
        let entry = &mut services[*at];
        if is_input { entry.1 = found } else { entry.2 = found }
    }
    if services.is_empty() {
        return Err(format_error(path, "no <semMessageExt> elements: nothing says what the messages mean"));
    }
    Ok(services)
}

/// Response time and throughput per service from a WSLA file; see the module docs.
pub(super) fn parse_wsla(path: &Path, text: &str) -> Result<HashMap<String, Qos>, Error> {
    let doc = parse(path, text)?;
    let root = root(path, &doc, "SLA")?;
    // Each declared SLA parameter: its service and unit.
    let mut parameters: HashMap<&str, (&str, &str)> = HashMap::new();
    for definition in elements(root).filter(|n| n.tag_name().name() == "ServiceDefinition") {
        let name = required(path, definition, "name")?;
        let service = name.strip_prefix("ServiceDefinition").unwrap_or(name);
        for parameter in definition.descendants().filter(|n| n.tag_name().name() == "SLAParameter") {
            let unit = required(path, parameter, "unit")?;
            parameters.insert(required(path, parameter, "name")?, (service, unit));
        }
    }
    let mut qos: HashMap<String, Qos> = HashMap::new();
    for objective in root.descendants().filter(|n| n.tag_name().name() == "ServiceLevelObjective") {
        let name = required(path, objective, "name")?;
        let text_of = |tag: &str| {
            objective
                .descendants()
                .find(|n| n.tag_name().name() == tag)
                .and_then(|n| n.text())
                .map(str::trim)
                .ok_or_else(|| format_error(path, format!("objective {name:?} has no <{tag}>")))
        };
        let parameter = text_of("SLAParameter")?;
        let value = text_of("Value")?;
        let value: f64 = value
            .parse()
            .map_err(|_| format_error(path, format!("objective {name:?}: <Value> {value:?} is not a number")))?;
        let &(service, unit) = parameters.get(parameter).ok_or_else(|| {
            format_error(
                path,
                format!("objective {name:?} bounds SLA parameter {parameter:?}, which no service declares"),
            )
        })?;
        let q = qos.entry(service.to_owned()).or_default();
        match unit {
            "milliseconds" | "seconds" => {
                let ms = if unit == "seconds" { value * 1000.0 } else { value };
                q.latency_p50_ms = ms;
                q.latency_p99_ms = ms;
            }
            "invocationsperminute" => q.throughput_rps = value / 60.0,
            "invocationspersecond" => q.throughput_rps = value,
            other => {
                return Err(format_error(
                    path,
                    format!(
                        "SLA parameter {parameter:?} has unit {other:?}: expected milliseconds, seconds, \
                         invocationsperminute or invocationspersecond"
                    ),
                ));
            }
        }
    }
    Ok(qos)
}
