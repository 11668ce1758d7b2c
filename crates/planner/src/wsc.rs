//! Loaders for the Web Services Challenge data sets, so the planner can be measured against
//! the published results: the XML form of WSC'08 and WSC'09 (`taxonomy.xml`, `services.xml`,
//! `problem.xml`) and the original WSC'09 form (`Taxonomy.owl`, `Services.wsdl`,
//! `Challenge.wsdl`, `Servicelevelagreements.wsla`).
//!
//! Each file may also be gzip-compressed beside its name (`services.xml.gz`), as the sets in
//! the repository's `data/` folder are; a file's text is read up to [`MAX_FILE_BYTES`].
//!
//! Not for: planning or checking compositions (the planner does), or any format beyond these.
//!
//! # Concepts, not instances
//!
//! The files name *instances*: a service's inputs and outputs and the task's provided and
//! wanted values. An instance belongs to the concept that encloses it in `taxonomy.xml` (or
//! whose `rdf:type` it has in `Taxonomy.owl`). The loaders map every instance to its concept,
//! so [`WscProblem::taxonomy`] holds concepts only and services, provided and wanted are
//! concept names. A name that is not an instance but a concept is taken as that concept (no
//! file in the sets does this, but the format does not forbid it); a name that is neither is
//! an [`Error::UnknownName`].
//!
//! # QoS mapping
//!
//! XML form (`services-output.xml`, attributes on `<service>`; synthetic values, see
//! `data/README.md` in the repository):
//!
//! | attribute | meaning | [`Qos`] field |
//! |---|---|---|
//! | `Res` | response time, ms (10..5000 in the sets) | `latency_p50_ms` and `latency_p99_ms` |
//! | `Pri` | price (0..10) | `cost` |
//! | `Ava` | availability, a fraction (0.05..0.99); a value in (1, 100] is read as percent | `availability` |
//! | `Rel` | reliability, same scale; used as `availability` only when `Ava` is absent | `availability` |
//! | `Lat`, `Suc` | network latency (ms) and success rate | not used |
//!
//! These files carry no throughput, so `throughput_rps` stays 0 (as in [`Qos::default`]).
//! `Lat` is left out because WSC'09 aggregates response time alone, and the planner's latency
//! is the service's own response time.
//!
//! WSLA form (`Servicelevelagreements.wsla`): each `<ServiceLevelObjective>` bounds one
//! `<SLAParameter>` declared in a `<ServiceDefinition name="ServiceDefinition{service}">`, and
//! the parameter's `unit` says what it measures: `milliseconds` (or `seconds`) is the response
//! time and becomes `latency_p50_ms` = `latency_p99_ms`; `invocationsperminute` (or
//! `invocationspersecond`) is the throughput and becomes `throughput_rps` (divided by 60).
//! Other units are an error. The objectives of the task itself (`Task0`) name no service and
//! are not used.
//!
//! A service the files give no QoS for gets [`Qos::default`].

mod original;
mod xml;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use baton_core::{ConceptId, Endpoint, Goal, Qos, ServiceDefinition, ServiceSpec, Taxonomy};

pub use original::{load_wsdl, parse_wsdl};
pub use xml::{load_xml, parse_xml};

/// A loaded challenge problem.
#[derive(Debug)]
pub struct WscProblem {
    /// The concept taxonomy (instances mapped away).
    pub taxonomy: Taxonomy,
    /// The services, in file order, with concept inputs and outputs.
    pub services: Vec<ServiceSpec>,
    /// The request: provided and wanted concepts (each once, in file order).
    pub goal: Goal,
    /// The known solution of `problem.xml`, when it has one: layers (services in one layer
    /// run in parallel), each a list of steps, each the step's interchangeable service names
    /// (its realizations) in file order. `problem.xml` states solutions as trees of
    /// `<sequence>` and `<parallel>`; a sequence puts its parts one after the other and a
    /// parallel starts its branches together, so layer `i` of a parallel is the union of its
    /// branches' layers `i`. Of several solutions, the one with the fewest layers is kept (then
    /// the fewest steps, then the first). `None` for the WSDL form.
    pub known_solution: Option<KnownSolution>,
}

/// A known solution: layers of steps of interchangeable service names (see
/// [`WscProblem::known_solution`]).
pub type KnownSolution = Vec<Vec<Vec<String>>>;

/// Why a data set could not be loaded; each names the file and the element or attribute.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read (missing, unreadable, not UTF-8, a broken gzip stream, or
    /// longer than [`MAX_FILE_BYTES`]).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not well-formed XML; the message gives the line and column where roxmltree
    /// knows them.
    #[error("{path} is not well-formed XML: {source}")]
    Xml {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: roxmltree::Error,
    },
    /// A file is well-formed but breaks the challenge format.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the element or attribute.
        reason: String,
    },
    /// A reference to a name that is neither an instance nor a concept of the taxonomy.
    #[error("{path}: {place} names {name:?}, which is neither an instance nor a concept of the taxonomy")]
    UnknownName {
        /// The file with the reference.
        path: PathBuf,
        /// Where the reference is, e.g. `an input of service "serv1"`.
        place: String,
        /// The unknown name.
        name: String,
    },
    /// The taxonomy is not a forest (unknown parent, cycle, a concept with two parents).
    #[error("{path}: {source}")]
    Taxonomy {
        /// The taxonomy file.
        path: PathBuf,
        /// The rule it breaks.
        source: baton_core::Error,
    },
    /// A service that is not a valid Baton service: its name is not a valid id, it has no
    /// output, or its QoS is out of range.
    #[error("{path}: service {service:?}: {source}")]
    Service {
        /// The file that defines it.
        path: PathBuf,
        /// The service's name.
        service: String,
        /// What is wrong.
        source: baton_core::Error,
    },
}

/// Loads a set directory, in the form its files show (each file plain or gzip-compressed): the original WSC'09 form when
/// `Services.wsdl` is there, else the XML form: `taxonomy.xml`, `problem.xml`, and the first of
/// `services-output.xml` (with QoS), `services.xml`, `services-original.xml`.
pub fn load_dir(dir: &Path) -> Result<WscProblem, Error> {
    if !dir.is_dir() {
        return Err(format_error(dir, "is not a directory"));
    }
    if present(&dir.join("Services.wsdl")) {
        return load_wsdl(dir);
    }
    let services = ["services-output.xml", "services.xml", "services-original.xml"]
        .iter()
        .map(|name| dir.join(name))
        .find(|path| present(path))
        .ok_or_else(|| {
            format_error(
                dir,
                "holds neither Services.wsdl nor any of services-output.xml, services.xml, services-original.xml",
            )
        })?;
    load_xml(&services, &dir.join("taxonomy.xml"), &dir.join("problem.xml"))
}

/// The longest text a file may hold (after decompression), so that a stray file or a gzip bomb
/// is an error, not an exhausted memory; the largest file of the published sets is 4.2 MB.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// `path` with `.gz` after its file name.
fn gzipped(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".gz");
    PathBuf::from(name)
}

/// True when `path` is a file, plain or gzip-compressed.
fn present(path: &Path) -> bool {
    path.is_file() || gzipped(path).is_file()
}

/// The text of `path`, or of `path.gz` when only that exists, decompressed when it is gzip
/// (by its magic bytes, so a `.gz` path given directly reads too); errors name `path`.
fn read(path: &Path) -> Result<String, Error> {
    read_at_most(path, MAX_FILE_BYTES)
}

fn read_at_most(path: &Path, limit: u64) -> Result<String, Error> {
    use std::io::{BufRead as _, Read as _};
    let error = |source| Error::Read { path: path.to_owned(), source };
    let compressed = gzipped(path);
    let file = if !path.exists() && compressed.is_file() { &compressed } else { path };
    let mut file = std::io::BufReader::new(std::fs::File::open(file).map_err(error)?);
    let is_gzip = file.fill_buf().map_err(error)?.starts_with(&[0x1f, 0x8b]);
    let mut bytes = Vec::new();
    let read = if is_gzip {
        flate2::bufread::GzDecoder::new(file).take(limit + 1).read_to_end(&mut bytes)
    } else {
        file.take(limit + 1).read_to_end(&mut bytes)
    };
    read.map_err(error)?;
    if bytes.len() as u64 > limit {
        let message = format!("longer than {limit} bytes");
        return Err(error(std::io::Error::new(std::io::ErrorKind::InvalidData, message)));
    }
    String::from_utf8(bytes).map_err(|e| error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

fn parse<'a>(path: &Path, text: &'a str) -> Result<roxmltree::Document<'a>, Error> {
    roxmltree::Document::parse(text).map_err(|source| Error::Xml { path: path.to_owned(), source })
}

fn format_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Format { path: path.to_owned(), reason: reason.into() }
}

/// The root element of `doc`, checked to be `<{tag}>` (by local name): catches files given in
/// the wrong place, which would otherwise load as empty.
fn root<'a, 'i>(path: &Path, doc: &'a roxmltree::Document<'i>, tag: &str) -> Result<roxmltree::Node<'a, 'i>, Error> {
    let root = doc.root_element();
    if root.tag_name().name() == tag {
        Ok(root)
    } else {
        Err(format_error(path, format!("expected root element <{tag}>, found <{}>", root.tag_name().name())))
    }
}

/// The element children of `node`.
fn elements<'a, 'i>(node: roxmltree::Node<'a, 'i>) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> {
    node.children().filter(roxmltree::Node::is_element)
}

/// The `attribute` of `node` (by local name, whatever its namespace), which must be there.
fn required<'a>(path: &Path, node: roxmltree::Node<'a, '_>, attribute: &str) -> Result<&'a str, Error> {
    node.attributes()
        .find(|a| a.name() == attribute)
        .map(|a| a.value())
        .ok_or_else(|| format_error(path, format!("<{}> without a {attribute} attribute", node.tag_name().name())))
}

/// The concepts of a taxonomy and the concept of each instance.
#[derive(Debug)]
struct Concepts {
    taxonomy: Taxonomy,
    instance_of: HashMap<String, ConceptId>,
}

impl Concepts {
    /// The concept `name` stands for: its concept when it is an instance, else itself when it
    /// is a concept. `place` says where the reference is, for the error.
    fn of(&self, path: &Path, place: impl FnOnce() -> String, name: &str) -> Result<String, Error> {
        let id = self.instance_of.get(name).copied().or_else(|| self.taxonomy.id(name));
        match id {
            Some(id) => Ok(self.taxonomy.name(id).to_owned()),
            None => Err(Error::UnknownName { path: path.to_owned(), place: place(), name: name.to_owned() }),
        }
    }
}

/// `names` without repeats, first occurrences in order.
fn dedup_in_order(names: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    names.into_iter().filter(|n| seen.insert(n.clone())).collect()
}

/// A challenge service: a worker with concept inputs and outputs, with `name` as id and name.
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
        credentials: None,
        tls: Default::default(),
    };
    ServiceSpec::new(definition).map_err(|source| Error::Service {
        path: path.to_owned(),
        service: name.to_owned(),
        source,
    })
}
