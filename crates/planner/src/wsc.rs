//! Loaders for the Web Services Challenge data sets: the XML form of WSC'08 and WSC'09
//! (`services.xml`, `taxonomy.xml`, `problem.xml`) and the original WSC'09 form
//! (`Services.wsdl`, `Taxonomy.owl`, `Challenge.wsdl`, `Servicelevelagreements.wsla`).
//!
//! In these sets, services, the request's provided and wanted values are *instances*; an
//! instance belongs to the concept that encloses it in `taxonomy.xml` (or whose `rdf:type` it
//! has in `Taxonomy.owl`). The loader maps every instance to its concept, so the planner
//! reasons over concepts only.
//!
//! QoS, XML form (`services-output.xml`): `Res` (response time, ms) becomes `latency_p50_ms`
//! and `latency_p99_ms`; `Pri` becomes `cost`; `Ava` (a fraction) becomes `availability`;
//! throughput is not in these files and stays 0. WSLA form: the response-time objective (ms)
//! becomes the latencies and the throughput objective (invocations per minute) becomes
//! `throughput_rps` (divided by 60).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use baton_core::{Endpoint, Goal, Qos, ServiceDefinition, ServiceSpec, Taxonomy, TaxonomyBuilder};

/// A loaded challenge problem.
#[derive(Debug)]
pub struct WscProblem {
    /// The concept taxonomy (instances mapped away).
    pub taxonomy: Taxonomy,
    /// The services, with concept inputs and outputs.
    pub services: Vec<ServiceSpec>,
    /// The request: provided and wanted concepts.
    pub goal: Goal,
    /// The known solution from `problem.xml`, when present.
    pub known_solution: Option<KnownSolution>,
}

/// A known solution: a sequence of steps, each a list of interchangeable service names.
pub type KnownSolution = Vec<Vec<String>>;

/// Why a data set could not be loaded; names the file and the element.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not well-formed XML.
    #[error("{path}: {source}")]
    Xml {
        /// The file.
        path: PathBuf,
        /// The parse error, with its position.
        source: roxmltree::Error,
    },
    /// A file is well-formed but not what the challenge format says.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the element or attribute.
        reason: String,
    },
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_owned(), source })
}

fn format_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Format { path: path.to_owned(), reason: reason.into() }
}

/// Loads a set directory: the original WSC'09 form when `Services.wsdl` is there, else the
/// XML form: `taxonomy.xml`, `problem.xml`, and `services-output.xml` (with QoS) when present,
/// else `services.xml` or `services-original.xml`.
pub fn load_dir(dir: &Path) -> Result<WscProblem, Error> {
    if dir.join("Services.wsdl").exists() {
        return load_wsdl(dir);
    }
    let services = ["services-output.xml", "services.xml", "services-original.xml"]
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.exists())
        .ok_or_else(|| format_error(dir, "holds none of services-output.xml, services.xml, services-original.xml"))?;
    load_xml(&services, &dir.join("taxonomy.xml"), &dir.join("problem.xml"))
}

/// Loads a problem from its three XML files.
pub fn load_xml(services: &Path, taxonomy: &Path, problem: &Path) -> Result<WscProblem, Error> {
    let (taxonomy, instance_of) = load_taxonomy(taxonomy)?;
    let concept_of = |path: &Path, instance: &str| concept(&taxonomy, &instance_of, path, instance);
    let services = load_services(services, &concept_of)?;
    let (goal, known_solution) = load_problem(problem, &concept_of)?;
    Ok(WscProblem { taxonomy, services, goal, known_solution })
}

/// The concept of `instance` (or `instance` itself when it names a concept).
fn concept(
    taxonomy: &Taxonomy,
    instance_of: &HashMap<String, String>,
    path: &Path,
    instance: &str,
) -> Result<String, Error> {
    instance_of
        .get(instance)
        .cloned()
        .or_else(|| taxonomy.id(instance).map(|_| instance.to_owned()))
        .ok_or_else(|| format_error(path, format!("instance {instance:?} is not in the taxonomy")))
}

/// A challenge service: a worker with concept inputs and outputs, named `name`.
fn service(path: &Path, name: &str, inputs: Vec<String>, outputs: Vec<String>, qos: Qos) -> Result<ServiceSpec, Error> {
    let definition = ServiceDefinition {
        id: name.to_owned(),
        name: name.to_owned(),
        version: String::new(),
        endpoint: Endpoint::Worker { queue: "wsc".to_owned() },
        capabilities: Vec::new(),
        inputs,
        outputs,
        formats: Vec::new(),
        qos,
        security: Default::default(),
        capacity: baton_core::service::DEFAULT_CAPACITY,
        health_check: Default::default(),
        labels: Default::default(),
    };
    ServiceSpec::new(definition).map_err(|e| format_error(path, format!("service {name:?}: {e}")))
}

fn parse<'a>(path: &Path, text: &'a str) -> Result<roxmltree::Document<'a>, Error> {
    roxmltree::Document::parse(text).map_err(|source| Error::Xml { path: path.to_owned(), source })
}

fn name_of<'a>(path: &Path, node: roxmltree::Node<'a, '_>) -> Result<&'a str, Error> {
    node.attribute("name").ok_or_else(|| format_error(path, format!("<{}> without a name", node.tag_name().name())))
}

/// The concept tree, and the concept of every instance.
fn load_taxonomy(path: &Path) -> Result<(Taxonomy, HashMap<String, String>), Error> {
    let text = read(path)?;
    let doc = parse(path, &text)?;
    let mut builder = TaxonomyBuilder::default();
    let mut instance_of = HashMap::new();
    // Iterative walk: (node, enclosing concept).
    let mut stack: Vec<(roxmltree::Node<'_, '_>, Option<&str>)> =
        doc.root_element().children().filter(|n| n.is_element()).map(|n| (n, None)).collect();
    while let Some((node, parent)) = stack.pop() {
        match node.tag_name().name() {
            "concept" => {
                let name = name_of(path, node)?;
                builder.add(name, parent).map_err(|e| format_error(path, e.to_string()))?;
                stack.extend(node.children().filter(|n| n.is_element()).map(|n| (n, Some(name))));
            }
            "instance" => {
                let name = name_of(path, node)?;
                let concept =
                    parent.ok_or_else(|| format_error(path, format!("instance {name:?} outside any concept")))?;
                instance_of.insert(name.to_owned(), concept.to_owned());
            }
            other => return Err(format_error(path, format!("unexpected element <{other}>"))),
        }
    }
    let taxonomy = builder.build().map_err(|e| format_error(path, e.to_string()))?;
    Ok((taxonomy, instance_of))
}

type ConceptOf<'a> = dyn Fn(&Path, &str) -> Result<String, Error> + 'a;

fn instances(
    path: &Path,
    node: Option<roxmltree::Node<'_, '_>>,
    concept_of: &ConceptOf<'_>,
) -> Result<Vec<String>, Error> {
    let Some(node) = node else { return Ok(Vec::new()) };
    node.children()
        .filter(|n| n.is_element())
        .map(|n| name_of(path, n).and_then(|name| concept_of(path, name)))
        .collect()
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|n| n.has_tag_name(tag))
}

fn number(path: &Path, service: &str, node: roxmltree::Node<'_, '_>, attribute: &str) -> Result<Option<f64>, Error> {
    node.attribute(attribute)
        .map(|v| {
            v.parse::<f64>().map_err(|_| {
                format_error(path, format!("service {service:?}: attribute {attribute}={v:?} is not a number"))
            })
        })
        .transpose()
}

fn load_services(path: &Path, concept_of: &ConceptOf<'_>) -> Result<Vec<ServiceSpec>, Error> {
    let text = read(path)?;
    let doc = parse(path, &text)?;
    let mut services = Vec::new();
    for node in doc.root_element().children().filter(|n| n.has_tag_name("service")) {
        let name = name_of(path, node)?;
        let mut qos = Qos::default();
        if let Some(res) = number(path, name, node, "Res")? {
            qos.latency_p50_ms = res;
            qos.latency_p99_ms = res;
        }
        if let Some(price) = number(path, name, node, "Pri")? {
            qos.cost = price;
        }
        if let Some(availability) = number(path, name, node, "Ava")? {
            qos.availability = availability;
        }
        let inputs = instances(path, child(node, "inputs"), concept_of)?;
        let outputs = instances(path, child(node, "outputs"), concept_of)?;
        services.push(service(path, name, inputs, outputs, qos)?);
    }
    Ok(services)
}

fn load_problem(path: &Path, concept_of: &ConceptOf<'_>) -> Result<(Goal, Option<KnownSolution>), Error> {
    let text = read(path)?;
    let doc = parse(path, &text)?;
    let task = doc.descendants().find(|n| n.has_tag_name("task")).ok_or_else(|| format_error(path, "no <task>"))?;
    let provided = instances(path, child(task, "provided"), concept_of)?;
    let wanted = instances(path, child(task, "wanted"), concept_of)?;
    let known_solution = doc.descendants().find(|n| n.has_tag_name("solution")).map(|solution| {
        solution
            .descendants()
            .filter(|n| n.has_tag_name("realizations"))
            .map(|r| r.children().filter_map(|s| s.attribute("name").map(str::to_owned)).collect())
            .collect()
    });
    Ok((Goal { provided, wanted, ..Goal::default() }, known_solution))
}

/// The value of the attribute with local name `name`, whatever its namespace.
fn attribute<'a>(node: roxmltree::Node<'a, '_>, name: &str) -> Option<&'a str> {
    node.attributes().find(|a| a.name() == name).map(|a| a.value())
}

/// The part after `#` of an RDF reference (`#con1` or `http://...#inst2`).
fn fragment(reference: &str) -> &str {
    reference.rsplit_once('#').map_or(reference, |(_, name)| name)
}

/// Loads the original WSC'09 form from `dir`.
pub fn load_wsdl(dir: &Path) -> Result<WscProblem, Error> {
    let owl = dir.join("Taxonomy.owl");
    let text = read(&owl)?;
    let doc = parse(&owl, &text)?;
    let mut builder = TaxonomyBuilder::default();
    let mut instance_of = HashMap::new();
    let mut classes = Vec::new();
    for node in doc.root_element().children().filter(|n| n.is_element()) {
        let Some(id) = attribute(node, "ID") else { continue };
        let reference = |tag: &str| {
            node.children().find(|c| c.tag_name().name() == tag).and_then(|c| attribute(c, "resource")).map(fragment)
        };
        match node.tag_name().name() {
            "Class" => classes.push((id, reference("subClassOf"))),
            _ => {
                let concept = reference("type")
                    .ok_or_else(|| format_error(&owl, format!("individual {id:?} has no rdf:type")))?;
                instance_of.insert(id.to_owned(), concept.to_owned());
            }
        }
    }
    // Parents may come after their children in the file; the builder resolves them at build.
    for (id, parent) in classes {
        builder.add(id, parent).map_err(|e| format_error(&owl, e.to_string()))?;
    }
    let taxonomy = builder.build().map_err(|e| format_error(&owl, e.to_string()))?;
    let concept_of = |path: &Path, instance: &str| concept(&taxonomy, &instance_of, path, instance);

    let wsla = dir.join("Servicelevelagreements.wsla");
    let qos = if wsla.exists() { load_wsla(&wsla)? } else { HashMap::new() };
    let services_path = dir.join("Services.wsdl");
    let messages = load_messages(&services_path, &concept_of)?;
    let mut services = Vec::new();
    for (name, (inputs, outputs)) in messages {
        let qos = qos.get(&name).copied().unwrap_or_default();
        services.push(service(&services_path, &name, inputs, outputs, qos)?);
    }
    let challenge = dir.join("Challenge.wsdl");
    let mut task = load_messages(&challenge, &concept_of)?;
    let (provided, wanted) = match task.len() {
        1 => task.pop_first().map(|(_, io)| io).unwrap_or_default(),
        n => return Err(format_error(&challenge, format!("describes {n} tasks, expected one"))),
    };
    Ok(WscProblem { taxonomy, services, goal: Goal { provided, wanted, ..Goal::default() }, known_solution: None })
}

/// Input and output concepts by service name.
type Messages = std::collections::BTreeMap<String, (Vec<String>, Vec<String>)>;

/// The inputs and outputs of each service of a WSDL file, from its MECE semantic extension:
/// `<semMessageExt id="{service}RequestMessage">` lists the inputs' ontology references and
/// `...ResponseMessage` the outputs'.
fn load_messages(path: &Path, concept_of: &ConceptOf<'_>) -> Result<Messages, Error> {
    let text = read(path)?;
    let doc = parse(path, &text)?;
    let mut services = Messages::new();
    for message in doc.descendants().filter(|n| n.tag_name().name() == "semMessageExt") {
        let id = attribute(message, "id").ok_or_else(|| format_error(path, "<semMessageExt> without an id"))?;
        let (service, is_input) = if let Some(service) = id.strip_suffix("RequestMessage") {
            (service, true)
        } else if let Some(service) = id.strip_suffix("ResponseMessage") {
            (service, false)
        } else {
            return Err(format_error(path, format!("message {id:?} is neither a request nor a response")));
        };
        let entry = services.entry(service.to_owned()).or_default();
        for reference in message.descendants().filter(|n| n.tag_name().name() == "ontologyRef") {
            let instance = fragment(reference.text().unwrap_or_default().trim());
            let concept = concept_of(path, instance)?;
            if is_input { entry.0.push(concept) } else { entry.1.push(concept) }
        }
    }
    if services.is_empty() {
        return Err(format_error(path, "no <semExt messages>: expected <semMessageExt> elements"));
    }
    Ok(services)
}

/// Response time and throughput per service from a WSLA file's service level objectives
/// (`ServiceLevelObjectiveResponsetime{service}`, `ServiceLevelObjectiveThroughput{service}`).
fn load_wsla(path: &Path) -> Result<HashMap<String, Qos>, Error> {
    let text = read(path)?;
    let doc = parse(path, &text)?;
    let mut qos: HashMap<String, Qos> = HashMap::new();
    for objective in doc.descendants().filter(|n| n.tag_name().name() == "ServiceLevelObjective") {
        let Some(name) = objective.attribute("name") else { continue };
        let value = || -> Result<f64, Error> {
            let text = objective
                .descendants()
                .find(|n| n.tag_name().name() == "Value")
                .and_then(|n| n.text())
                .ok_or_else(|| format_error(path, format!("objective {name:?} has no <Value>")))?;
            text.trim()
                .parse()
                .map_err(|_| format_error(path, format!("objective {name:?}: value {text:?} is not a number")))
        };
        if let Some(service) = name.strip_prefix("ServiceLevelObjectiveResponsetime") {
            let ms = value()?;
            let q = qos.entry(service.to_owned()).or_default();
            q.latency_p50_ms = ms;
            q.latency_p99_ms = ms;
        } else if let Some(service) = name.strip_prefix("ServiceLevelObjectiveThroughput") {
            qos.entry(service.to_owned()).or_default().throughput_rps = value()? / 60.0;
        }
    }
    Ok(qos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("baton-wsc-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const TAXONOMY: &str = r#"<taxonomy><concept name="thing"><instance name="i0"/>
        <concept name="doc"><instance name="i1"/></concept></concept></taxonomy>"#;
    const PROBLEM: &str = r#"<problemStructure><task><provided><instance name="i0"/></provided>
        <wanted><instance name="i1"/></wanted></task></problemStructure>"#;

    #[test]
    fn instances_map_to_their_concepts_and_qos_is_read() {
        let dir = temp_dir("ok");
        write(&dir, "taxonomy.xml", TAXONOMY);
        write(&dir, "problem.xml", PROBLEM);
        write(
            &dir,
            "services-output.xml",
            r#"<services><service name="s1" Res="12.5" Pri="3" Ava="0.9"><inputs><instance name="i0"/></inputs>
               <outputs><instance name="i1"/></outputs></service></services>"#,
        );
        let p = load_dir(&dir).unwrap();
        assert_eq!(
            (p.goal.provided.as_slice(), p.goal.wanted.as_slice()),
            (&["thing".to_owned()][..], &["doc".to_owned()][..])
        );
        let s = &p.services[0];
        assert_eq!((s.inputs(), s.outputs()), (&["thing".to_owned()][..], &["doc".to_owned()][..]));
        assert_eq!((s.qos().latency_p50_ms, s.qos().cost, s.qos().availability), (12.5, 3.0, 0.9));
    }

    #[test]
    fn bad_files_are_errors_naming_the_file_and_the_element() {
        let dir = temp_dir("bad");
        write(&dir, "taxonomy.xml", TAXONOMY);
        write(&dir, "problem.xml", PROBLEM);
        let cases = [
            (
                r#"<services><service name="s1"><inputs><instance name="nope"/></inputs></service></services>"#,
                r#"instance "nope" is not in the taxonomy"#,
            ),
            (r#"<services><service><inputs/></service></services>"#, "<service> without a name"),
            (
                r#"<services><service name="s1" Res="fast"><outputs><instance name="i1"/></outputs></service></services>"#,
                r#"attribute Res="fast" is not a number"#,
            ),
            (
                r#"<services><service name="S 1"><outputs><instance name="i1"/></outputs></service></services>"#,
                "invalid id",
            ),
            (r#"<services><service name="s1">"#, "services.xml"),
        ];
        for (services, expected) in cases {
            write(&dir, "services.xml", services);
            let err = load_dir(&dir).unwrap_err().to_string();
            assert!(err.contains(expected) && err.contains("services.xml"), "{err:?} should name {expected:?}");
        }
        std::fs::remove_file(dir.join("services.xml")).unwrap();
        assert!(load_dir(&dir).unwrap_err().to_string().contains("holds none of"));
    }

    #[test]
    fn the_wsdl_form_reports_what_is_wrong() {
        let dir = temp_dir("wsdl");
        write(&dir, "Services.wsdl", "<definitions/>");
        assert!(load_dir(&dir).unwrap_err().to_string().contains("Taxonomy.owl"));
        let owl = r##"<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:owl="http://www.w3.org/2002/07/owl#">
            <owl:Class rdf:ID="thing"/><owl:Thing rdf:ID="i0"/></rdf:RDF>"##;
        write(&dir, "Taxonomy.owl", owl);
        assert!(load_dir(&dir).unwrap_err().to_string().contains(r#"individual "i0" has no rdf:type"#));
        let owl = r##"<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:owl="http://www.w3.org/2002/07/owl#">
            <owl:Class rdf:ID="thing"/><owl:Thing rdf:ID="i0"><rdf:type rdf:resource="#thing"/></owl:Thing></rdf:RDF>"##;
        write(&dir, "Taxonomy.owl", owl);
        assert!(load_dir(&dir).unwrap_err().to_string().contains("no <semExt"));
        let wsdl = r#"<definitions xmlns:mece="m"><mece:semMessageExt id="s1RequestMessage"><mece:semExt id="1">
            <mece:ontologyRef>http://x#ghost</mece:ontologyRef></mece:semExt></mece:semMessageExt></definitions>"#;
        write(&dir, "Services.wsdl", wsdl);
        assert!(load_dir(&dir).unwrap_err().to_string().contains(r#"instance "ghost" is not in the taxonomy"#));
    }
}
