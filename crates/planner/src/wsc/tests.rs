use std::path::{Path, PathBuf};

use super::original::{parse_messages, parse_owl, parse_wsla};
use super::xml::{parse_problem, parse_services, parse_taxonomy};
use super::*;

const TAXONOMY: &str = r#"<?xml version="1.0"?><taxonomy>
    <concept name="thing"><instance name="i0"/>
        <concept name="doc"><instance name="i1"/><instance name="i1b"/>
            <concept name="invoice"><instance name="i2"/></concept>
        </concept>
    </concept>
    <concept name="other"><instance name="i3"/></concept>
</taxonomy>"#;

fn concepts() -> Concepts {
    parse_taxonomy(Path::new("taxonomy.xml"), TAXONOMY).unwrap()
}

fn services(text: &str) -> Result<Vec<ServiceSpec>, Error> {
    parse_services(Path::new("services.xml"), text, &concepts())
}

fn problem(text: &str) -> Result<(Goal, Option<KnownSolution>), Error> {
    parse_problem(Path::new("problem.xml"), text, &concepts())
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|&n| n.to_owned()).collect()
}

/// Asserts that `result` failed with a message naming `file` and containing every `expected`.
#[track_caller]
fn check_error<T: std::fmt::Debug>(result: Result<T, Error>, file: &str, expected: &[&str]) {
    let message = result.unwrap_err().to_string();
    assert!(message.contains(file), "{message:?} should name {file}");
    for e in expected {
        assert!(message.contains(e), "{message:?} should contain {e:?}");
    }
}

#[test]
fn the_taxonomy_keeps_concepts_and_maps_instances_to_their_concept() {
    let c = concepts();
    assert_eq!(c.taxonomy.len(), 4);
    let t = &c.taxonomy;
    assert_eq!(t.parent(t.id("invoice").unwrap()), t.id("doc"));
    assert_eq!(t.parent(t.id("thing").unwrap()), None);
    assert!(t.id("i1").is_none(), "instances are not concepts");
    let of = |name| c.of(Path::new("x"), String::new, name).unwrap();
    assert_eq!([of("i0"), of("i1"), of("i1b"), of("i2"), of("i3")], ["thing", "doc", "doc", "invoice", "other"]);
    assert_eq!(of("doc"), "doc", "a concept named directly stands for itself");
}

#[test]
fn malformed_taxonomies_are_errors_naming_the_element() {
    let cases: [(&str, &[&str]); 8] = [
        ("<taxonomy>\n<concept name=\"a\"></taxonomy>", &["not well-formed XML", "2:"]),
        (r#"<services/>"#, &["expected root element <taxonomy>, found <services>"]),
        (r#"<taxonomy><instance name="i"/></taxonomy>"#, &[r#"instance "i" is outside any concept"#]),
        (r#"<taxonomy><concept/></taxonomy>"#, &["<concept> without a name attribute"]),
        (r#"<taxonomy><concept name="a"><thing name="x"/></concept></taxonomy>"#, &["unexpected element <thing>"]),
        (
            r#"<taxonomy><concept name="a"><instance name="i"><concept name="b"/></instance></concept></taxonomy>"#,
            &[r#"<concept> "b" inside <instance>"#],
        ),
        (
            r#"<taxonomy><concept name="a"><instance name="i"/></concept><concept name="b"><instance name="i"/></concept></taxonomy>"#,
            &[r#"instance "i" is in both "a" and "b""#],
        ),
        (
            r#"<taxonomy><concept name="a"><concept name="b"/></concept><concept name="b"/></taxonomy>"#,
            &[r#"invalid concept "b""#, "already has parent"],
        ),
    ];
    for (text, expected) in cases {
        check_error(parse_taxonomy(Path::new("taxonomy.xml"), text), "taxonomy.xml", expected);
    }
}

#[test]
fn services_get_concepts_and_the_qos_mapping() {
    let loaded = services(
        r#"<services>
        <service name="s1" Res="12.5" Lat="99" Pri="3" Ava="0.9" Rel="0.5" Suc="0.1">
            <inputs><instance name="i0"/><instance name="i1"/><instance name="i1b"/></inputs>
            <outputs><instance name="i2"/></outputs>
        </service>
        <service name="s2" Ava="95"><outputs><concept name="other"/></outputs></service>
        <service name="s3" Rel="0.25"><inputs/><outputs><instance name="i3"/></outputs></service>
        <service name="s4"><outputs><instance name="i3"/></outputs></service>
    </services>"#,
    )
    .unwrap();
    let ids: Vec<&str> = loaded.iter().map(|s| s.id().as_str()).collect();
    assert_eq!(ids, ["s1", "s2", "s3", "s4"], "file order");
    let s1 = &loaded[0];
    assert_eq!(s1.inputs(), strings(&["doc", "thing"]), "two instances of one concept give it once");
    assert_eq!(s1.outputs(), strings(&["invoice"]));
    let q = s1.qos();
    assert_eq!(
        (q.latency_p50_ms, q.latency_p99_ms, q.cost, q.availability, q.throughput_rps),
        (12.5, 12.5, 3.0, 0.9, 0.0)
    );
    assert_eq!(loaded[1].qos().availability, 0.95, "a percentage");
    assert_eq!(loaded[1].outputs(), strings(&["other"]));
    assert_eq!(loaded[2].qos().availability, 0.25, "reliability when there is no availability");
    assert_eq!(loaded[3].qos(), &Qos::default());
}

#[test]
fn malformed_services_are_errors_naming_the_service_and_the_element() {
    let cases: [(&str, &[&str]); 12] = [
        (
            r#"<services><service name="s1"><inputs><instance name="nope"/></inputs></service></services>"#,
            &[r#"an input of service "s1" names "nope""#, "neither an instance nor a concept"],
        ),
        (
            r#"<services><service name="s1"><outputs><instance name="ghost"/></outputs></service></services>"#,
            &[r#"an output of service "s1" names "ghost""#],
        ),
        (r#"<services><service><inputs/></service></services>"#, &["<service> without a name attribute"]),
        (
            r#"<services><service name="s1" Res="fast"><outputs><instance name="i1"/></outputs></service></services>"#,
            &[r#"service "s1": attribute Res="fast" is not a number"#],
        ),
        (
            r#"<services><service name="s1" Ava="150"><outputs><instance name="i1"/></outputs></service></services>"#,
            &[r#"service "s1": attribute Ava=150 is neither a fraction nor a percentage"#],
        ),
        (
            r#"<services><service name="s1" Res="-4"><outputs><instance name="i1"/></outputs></service></services>"#,
            &[r#"service "s1""#, "qos.latency_p50_ms"],
        ),
        (
            r#"<services><service name="S 1"><outputs><instance name="i1"/></outputs></service></services>"#,
            &[r#"service "S 1""#, "invalid"],
        ),
        (
            r#"<services><service name="s1"><inputs><instance name="i1"/></inputs></service></services>"#,
            &[r#"service "s1""#, "at least one capability or one output"],
        ),
        (
            r#"<services><service name="s1"><outputs><instance name="i1"/></outputs></service><service name="s1"><outputs><instance name="i1"/></outputs></service></services>"#,
            &[r#"service "s1" is defined twice"#],
        ),
        (
            r#"<services><service name="s1"><outputs><bogus name="i1"/></outputs></service></services>"#,
            &[r#"unexpected element <bogus> in an output of service "s1""#],
        ),
        (TAXONOMY, &["expected root element <services>, found <taxonomy>"]),
        (r#"<services><service name="s1">"#, &["not well-formed XML"]),
    ];
    for (text, expected) in cases {
        check_error(services(text), "services.xml", expected);
    }
}

#[test]
fn the_problem_gives_the_goal_and_the_shortest_known_solution_as_layers() {
    let (goal, known) = problem(
        r#"<problemStructure>
        <task><provided><instance name="i0"/><instance name="i3"/><instance name="i0"/></provided>
              <wanted><instance name="i2"/></wanted></task>
        <solutions>
            <solution><sequence>
                <serviceDesc><realizations><service name="x1"/></realizations></serviceDesc>
                <serviceDesc><realizations><service name="x2"/></realizations></serviceDesc>
                <serviceDesc><realizations><service name="x3"/></realizations></serviceDesc>
                <serviceDesc><realizations><service name="x4"/></realizations></serviceDesc>
            </sequence></solution>
            <solution><sequence>
                <parallel>
                    <sequence>
                        <serviceDesc><abstraction><input><concept name="c"/></input></abstraction>
                            <realizations><service name="a"/><service name="a2"/></realizations></serviceDesc>
                        <serviceDesc><realizations><service name="b"/></realizations></serviceDesc>
                    </sequence>
                    <serviceDesc><realizations><service name="c"/></realizations></serviceDesc>
                </parallel>
                <serviceDesc><realizations><service name="d"/></realizations></serviceDesc>
            </sequence></solution>
        </solutions>
    </problemStructure>"#,
    )
    .unwrap();
    assert_eq!(goal.provided, strings(&["thing", "other"]));
    assert_eq!(goal.wanted, strings(&["invoice"]));
    let expected = vec![vec![strings(&["a", "a2"]), strings(&["c"])], vec![strings(&["b"])], vec![strings(&["d"])]];
    assert_eq!(known, Some(expected), "the 3-layer solution, not the 4-layer one before it");
}

#[test]
fn ties_in_layers_go_to_fewer_steps_then_to_the_first() {
    let solution = |names: &[&str]| {
        let descs: String = names
            .iter()
            .map(|n| format!(r#"<serviceDesc><realizations><service name="{n}"/></realizations></serviceDesc>"#))
            .collect();
        format!("<solution><parallel>{descs}</parallel></solution>")
    };
    let text = format!(
        r#"<problemStructure><task><provided/><wanted/></task><solutions>{}{}{}</solutions></problemStructure>"#,
        solution(&["a", "b"]),
        solution(&["c"]),
        solution(&["d"]),
    );
    let (goal, known) = problem(&text).unwrap();
    assert!(goal.provided.is_empty() && goal.wanted.is_empty());
    assert_eq!(known, Some(vec![vec![strings(&["c"])]]));
    let (_, none) = problem("<problemStructure><task><provided/><wanted/></task></problemStructure>").unwrap();
    assert_eq!(none, None);
}

#[test]
fn malformed_problems_are_errors_naming_the_element() {
    let task = r#"<task><provided><instance name="i0"/></provided><wanted><instance name="i1"/></wanted></task>"#;
    let with_solution =
        |s: &str| format!("<problemStructure>{task}<solutions><solution>{s}</solution></solutions></problemStructure>");
    let cases: [(String, &[&str]); 8] = [
        ("<problemStructure/>".into(), &["<problemStructure> without a <task>"]),
        ("<problemStructure><task><provided/></task></problemStructure>".into(), &["<task> without a <wanted>"]),
        (
            r#"<problemStructure><task><provided><instance name="zz"/></provided><wanted/></task></problemStructure>"#
                .into(),
            &[r#"a provided value names "zz""#],
        ),
        (
            r#"<problemStructure><task><provided/><wanted><instance name="zz"/></wanted></task></problemStructure>"#
                .into(),
            &[r#"a wanted value names "zz""#],
        ),
        (with_solution("<loop/>"), &["unexpected element <loop> in a solution"]),
        (with_solution("<serviceDesc/>"), &["<serviceDesc> without a <realizations>"]),
        (with_solution("<serviceDesc><realizations/></serviceDesc>"), &["<realizations> without a <service>"]),
        (with_solution(&"<sequence>".repeat(300)), &["not well-formed XML"]),
    ];
    for (text, expected) in cases {
        check_error(problem(&text), "problem.xml", expected);
    }
    let deep = with_solution(&format!("{}{}", "<sequence>".repeat(300), "</sequence>".repeat(300)));
    check_error(problem(&deep), "problem.xml", &["nests deeper than 256 levels"]);
}

/// A fresh directory under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("baton-wsc-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn load_dir_picks_the_services_file_and_names_missing_files() {
    let dir = TempDir::new("dir");
    let result = load_dir(&dir.0);
    check_error(result, "baton-wsc-dir", &["holds neither Services.wsdl nor any of services-output.xml"]);
    check_error(load_dir(&dir.0.join("nope")), "nope", &["is not a directory"]);

    let one = |name: &str| {
        format!(r#"<services><service name="{name}"><outputs><instance name="i2"/></outputs></service></services>"#)
    };
    dir.write("services-original.xml", &one("original"));
    check_error(load_dir(&dir.0), "taxonomy.xml", &["cannot read"]);
    dir.write("taxonomy.xml", TAXONOMY);
    check_error(load_dir(&dir.0), "problem.xml", &["cannot read"]);
    dir.write("problem.xml", r#"<problemStructure><task><provided><instance name="i0"/></provided><wanted><instance name="i1"/></wanted></task></problemStructure>"#);
    let name = |p: WscProblem| p.services[0].id().as_str().to_owned();
    assert_eq!(name(load_dir(&dir.0).unwrap()), "original");
    dir.write("services.xml", &one("plain"));
    assert_eq!(name(load_dir(&dir.0).unwrap()), "plain");
    dir.write("services-output.xml", &one("with-qos"));
    let p = load_dir(&dir.0).unwrap();
    assert_eq!(
        (p.goal.provided.clone(), p.goal.wanted.clone(), p.known_solution.is_none()),
        (strings(&["thing"]), strings(&["doc"]), true)
    );
    assert_eq!(name(p), "with-qos");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn files_are_read_plain_or_gzip_compressed_and_bounded() {
    let dir = TempDir::new("gz");
    let services = r#"<services><service name="zipped"><outputs><instance name="i2"/></outputs></service></services>"#;
    let problem = r#"<problemStructure><task><provided><instance name="i0"/></provided><wanted><instance name="i1"/></wanted></task></problemStructure>"#;
    for (name, text) in [("services.xml", services), ("taxonomy.xml", TAXONOMY), ("problem.xml", problem)] {
        std::fs::write(dir.0.join(format!("{name}.gz")), gzip(text.as_bytes())).unwrap();
    }
    let p = load_dir(&dir.0).unwrap();
    assert_eq!((p.services[0].id().as_str(), p.taxonomy.len()), ("zipped", 4));

    // A compressed file named as such reads too.
    let qos = dir.0.join("services.xml.gz");
    let p = load_xml(&qos, &dir.0.join("taxonomy.xml.gz"), &dir.0.join("problem.xml")).unwrap();
    assert_eq!(p.services[0].id().as_str(), "zipped");

    // The plain file wins over its compressed twin.
    dir.write("services.xml", &services.replace("zipped", "plain"));
    assert_eq!(load_dir(&dir.0).unwrap().services[0].id().as_str(), "plain");

    // A broken stream, text that is not UTF-8 and text past the bound are read errors naming
    // the file as asked for.
    std::fs::write(dir.0.join("problem.xml.gz"), b"\x1f\x8bnot gzip").unwrap();
    check_error(load_dir(&dir.0), "problem.xml", &["cannot read"]);
    std::fs::write(dir.0.join("latin1.xml.gz"), gzip(b"caf\xe9")).unwrap();
    check_error(read(&dir.0.join("latin1.xml")), "latin1.xml", &["cannot read", "utf-8"]);
    let taxonomy = dir.0.join("taxonomy.xml");
    check_error(read_at_most(&taxonomy, 64), "taxonomy.xml", &["cannot read", "longer than 64 bytes"]);
    std::fs::write(dir.0.join("taxonomy.xml"), TAXONOMY).unwrap();
    assert_eq!(read_at_most(&taxonomy, TAXONOMY.len() as u64).unwrap(), TAXONOMY);
    check_error(read_at_most(&taxonomy, TAXONOMY.len() as u64 - 1), "taxonomy.xml", &["longer than"]);
}

const OWL: &str = r##"<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:rdfs="http://www.w3.org/2000/01/rdf-schema#" xmlns:owl="http://www.w3.org/2002/07/owl#">
    <owl:Ontology rdf:about=""/>
    <owl:Thing rdf:ID="i1"><rdf:type rdf:resource="#doc"/></owl:Thing>
    <owl:Class rdf:ID="doc"><rdfs:subClassOf rdf:resource="#thing"/></owl:Class>
    <owl:Class rdf:ID="thing"/>
    <owl:Thing rdf:ID="i0"><rdf:type rdf:resource="http://x/o.owl#thing"/></owl:Thing>
</rdf:RDF>"##;

fn wsdl(messages: &[(&str, &[&str])]) -> String {
    let messages: String = messages
        .iter()
        .map(|(id, refs)| {
            let refs: String = refs
                .iter()
                .map(|r| {
                    format!(
                        "<mece:semExt id=\"x\"><mece:ontologyRef>http://x/o.owl#{r}</mece:ontologyRef></mece:semExt>"
                    )
                })
                .collect();
            format!(r#"<mece:semMessageExt id="{id}">{refs}</mece:semMessageExt>"#)
        })
        .collect();
    format!(
        r#"<definitions><mece:semExtension xmlns:mece="http://www.vs.uni-kassel.de/mece">{messages}</mece:semExtension></definitions>"#
    )
}

fn wsla(objectives: &[(&str, &str, &str, &str)]) -> String {
    let mut definitions = String::new();
    let mut obligations = String::new();
    for (service, parameter, unit, value) in objectives {
        definitions.push_str(&format!(
            r#"<ServiceDefinition name="ServiceDefinition{service}"><Operation><SLAParameter name="{parameter}" unit="{unit}"><Metric>m</Metric></SLAParameter></Operation></ServiceDefinition>"#
        ));
        obligations.push_str(&format!(
            r#"<ServiceLevelObjective name="o{parameter}"><Expression><Predicate><SLAParameter>{parameter}</SLAParameter><Value>{value}</Value></Predicate></Expression></ServiceLevelObjective>"#
        ));
    }
    format!(r#"<SLA xmlns="http://www.ibm.com/wsla">{definitions}<Obligations>{obligations}</Obligations></SLA>"#)
}

#[test]
fn the_original_form_reads_owl_wsdl_and_wsla() {
    let dir = TempDir::new("wsdl");
    dir.write("Taxonomy.owl", OWL);
    dir.write(
        "Services.wsdl",
        &wsdl(&[("s1RequestMessage", &["i0"]), ("s2ResponseMessage", &["i0"]), ("s1ResponseMessage", &["i1"])]),
    );
    dir.write("Challenge.wsdl", &wsdl(&[("Task0RequestMessage", &["i0"]), ("Task0ResponseMessage", &["i1"])]));
    dir.write(
        "Servicelevelagreements.wsla",
        &wsla(&[
            ("Task0", "rtTask0", "milliseconds", "400"),
            ("s1", "rt1", "milliseconds", "120"),
            ("s1", "tp1", "invocationsperminute", "6000"),
            ("s2", "rt2", "seconds", "1.5"),
        ]),
    );
    let p = load_dir(&dir.0).unwrap();
    assert_eq!(p.taxonomy.len(), 2);
    let ids: Vec<&str> = p.services.iter().map(|s| s.id().as_str()).collect();
    assert_eq!(ids, ["s1", "s2"], "file order of first mention");
    assert_eq!((p.services[0].inputs(), p.services[0].outputs()), (&strings(&["thing"])[..], &strings(&["doc"])[..]));
    assert_eq!(p.services[1].inputs(), &[] as &[String]);
    let q = p.services[0].qos();
    assert_eq!((q.latency_p50_ms, q.latency_p99_ms, q.throughput_rps), (120.0, 120.0, 100.0));
    assert_eq!(p.services[1].qos().latency_p50_ms, 1500.0);
    assert_eq!((p.goal.provided, p.goal.wanted), (strings(&["thing"]), strings(&["doc"])));
    assert!(p.known_solution.is_none());

    std::fs::remove_file(dir.0.join("Servicelevelagreements.wsla")).unwrap();
    assert!(load_dir(&dir.0).unwrap().services.iter().all(|s| s.qos() == &Qos::default()), "no WSLA, no QoS");
}

#[test]
fn malformed_original_files_are_errors_naming_the_element() {
    let owl = |body: &str| format!(r#"<rdf:RDF xmlns:rdf="r" xmlns:rdfs="s" xmlns:owl="o">{body}</rdf:RDF>"#);
    let owl_cases: [(String, &[&str]); 5] = [
        (owl(r#"<owl:Thing rdf:ID="i0"/>"#), &[r#"individual "i0" has no rdf:type"#]),
        (
            owl(r##"<owl:Thing rdf:ID="i0"><rdf:type rdf:resource="#ghost"/></owl:Thing>"##),
            &[r#"individual "i0" has unknown rdf:type "ghost""#],
        ),
        (
            owl(r##"<owl:Class rdf:ID="a"><rdfs:subClassOf rdf:resource="#ghost"/></owl:Class>"##),
            &[r#"invalid concept "a""#, "unknown parent"],
        ),
        (
            owl(
                r##"<owl:Class rdf:ID="a"/><owl:Class rdf:ID="b"/><owl:Class rdf:ID="c"><rdfs:subClassOf rdf:resource="#a"/><rdfs:subClassOf rdf:resource="#b"/></owl:Class>"##,
            ),
            &[r#"<Class> "c" has more than one <subClassOf>"#],
        ),
        (owl("<owl:Class/>"), &["<Class> without a ID attribute"]),
    ];
    for (text, expected) in owl_cases {
        check_error(parse_owl(Path::new("Taxonomy.owl"), &text), "Taxonomy.owl", expected);
    }

    let c = parse_owl(Path::new("Taxonomy.owl"), OWL).unwrap();
    let wsdl_cases: [(String, &[&str]); 4] = [
        ("<definitions/>".into(), &["no <semMessageExt> elements"]),
        (
            wsdl(&[("s1RequestMessage", &["ghost"])]),
            &[r#"an input of "s1" (message "s1RequestMessage") names "ghost""#],
        ),
        (wsdl(&[("s1Fault", &["i0"])]), &[r#"message "s1Fault" is neither a RequestMessage nor a ResponseMessage"#]),
        (
            wsdl(&[("s1RequestMessage", &["i0"]), ("s1RequestMessage", &["i0"])]),
            &[r#"message "s1RequestMessage" is described twice"#],
        ),
    ];
    for (text, expected) in wsdl_cases {
        check_error(parse_messages(Path::new("Services.wsdl"), &text, &c), "Services.wsdl", expected);
    }

    let wsla_cases: [(String, &[&str]); 3] = [
        (wsla(&[("s1", "rt1", "milliseconds", "soon")]), &[r#"objective "ort1": <Value> "soon" is not a number"#]),
        (wsla(&[("s1", "tp1", "dollar", "10")]), &[r#"SLA parameter "tp1" has unit "dollar""#]),
        (
            r#"<SLA><Obligations><ServiceLevelObjective name="o"><SLAParameter>p</SLAParameter><Value>1</Value></ServiceLevelObjective></Obligations></SLA>"#.into(),
            &[r#"objective "o" bounds SLA parameter "p", which no service declares"#],
        ),
    ];
    for (text, expected) in wsla_cases {
        check_error(
            parse_wsla(Path::new("Servicelevelagreements.wsla"), &text),
            "Servicelevelagreements.wsla",
            expected,
        );
    }

    let dir = TempDir::new("wsdl-bad");
    dir.write("Services.wsdl", &wsdl(&[("s1ResponseMessage", &["i0"])]));
    check_error(load_dir(&dir.0), "Taxonomy.owl", &["cannot read"]);
    dir.write("Taxonomy.owl", OWL);
    check_error(load_dir(&dir.0), "Challenge.wsdl", &["cannot read"]);
    dir.write("Challenge.wsdl", &wsdl(&[("Task0RequestMessage", &["i0"]), ("Task1RequestMessage", &["i0"])]));
    check_error(load_dir(&dir.0), "Challenge.wsdl", &["describes several tasks, expected one"]);
}

/// A data set under the repository's `data/` folder (gzip-compressed files).
fn data(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data").join(path)
}

#[test]
fn the_real_sets_load_whole_with_the_published_counts() {
    // (set, services, concepts): data/README.md.
    let sets = [
        ("wsc08/TESTSET/Set01MetaData", 158, 1540),
        ("wsc08/TESTSET/Set02MetaData", 558, 1565),
        ("wsc08/TESTSET/Set03MetaData", 604, 3089),
        ("wsc08/TESTSET/Set04MetaData", 1041, 3135),
        ("wsc08/TESTSET/Set05MetaData", 1090, 3067),
        ("wsc08/TESTSET/Set06MetaData", 2198, 12468),
        ("wsc08/TESTSET/Set07MetaData", 4113, 3075),
        ("wsc08/TESTSET/Set08MetaData", 8119, 12337),
        ("wsc09/Testset01", 572, 1578),
        ("wsc09/Testset02", 4129, 12388),
        ("wsc09/example-wsla", 53, 310),
    ];
    for (set, services, concepts) in sets {
        let p = load_dir(&data(set)).unwrap_or_else(|e| panic!("{set}: {e}"));
        assert_eq!((p.services.len(), p.taxonomy.len()), (services, concepts), "{set}");
        assert!(!p.goal.provided.is_empty() && !p.goal.wanted.is_empty(), "{set}");
        let known = p.known_solution.as_ref().map(|k| k.iter().flatten().count());
        assert_eq!(known.is_some(), !set.contains("wsla"), "{set}: a known solution exactly in the XML form");
        // WSC'09 XML sets have services-output.xml, so QoS; WSC'08 sets' services.xml has none.
        let with_qos = p.services.iter().filter(|s| s.qos().latency_p50_ms > 0.0).count();
        assert_eq!(with_qos, if set.starts_with("wsc09") { services } else { 0 }, "{set}");
    }
}

#[test]
fn texts_parse_as_their_files_load() {
    let dir = data("wsc08/TESTSET/Set01MetaData");
    let text = |name: &str| read(&dir.join(name)).unwrap();
    let parsed = parse_xml(&text("services.xml"), &text("taxonomy.xml"), &text("problem.xml")).unwrap();
    let loaded = load_dir(&dir).unwrap();
    assert_eq!(
        (parsed.services, parsed.goal, parsed.known_solution),
        (loaded.services, loaded.goal, loaded.known_solution)
    );
    check_error(parse_xml("", &text("taxonomy.xml"), &text("problem.xml")), "services.xml", &["not well-formed"]);

    let dir = data("wsc09/example-wsla");
    let text = |name: &str| read(&dir.join(name)).unwrap();
    let wsla = text("Servicelevelagreements.wsla");
    let parsed =
        parse_wsdl(&text("Taxonomy.owl"), &text("Services.wsdl"), &text("Challenge.wsdl"), Some(&wsla)).unwrap();
    let loaded = load_dir(&dir).unwrap();
    assert_eq!((parsed.services, parsed.goal), (loaded.services, loaded.goal));
    let without_qos = parse_wsdl(&text("Taxonomy.owl"), &text("Services.wsdl"), &text("Challenge.wsdl"), None);
    assert!(without_qos.unwrap().services.iter().all(|s| s.qos() == &Qos::default()));
    check_error(parse_wsdl("<x/>", "", "", None), "Taxonomy.owl", &["expected root element <RDF>"]);
}

#[test]
fn the_qos_files_give_every_service_qos_in_the_documented_ranges() {
    for set in 1..=8 {
        let dir = data(&format!("wsc08/TESTSET/Set{set:02}MetaData"));
        let qos = data(&format!("wsc08/vuw-qos/Set{set:02}MetaData/services-output.xml"));
        let p = load_xml(&qos, &dir.join("taxonomy.xml"), &dir.join("problem.xml")).unwrap();
        let plain = load_dir(&dir).unwrap();
        assert_eq!(p.services.len(), plain.services.len(), "set {set:02}: the same services");
        for s in &p.services {
            let q = s.qos();
            assert!((10.0..=5000.0).contains(&q.latency_p50_ms), "set {set:02} {}: {q:?}", s.id());
            assert!((0.0..=1.0).contains(&q.availability) && (0.0..=10.0).contains(&q.cost), "set {set:02}: {q:?}");
        }
    }
    // The WSLA example: response time in ms and throughput per minute for every service.
    let p = load_dir(&data("wsc09/example-wsla")).unwrap();
    for s in &p.services {
        let q = s.qos();
        assert!(q.latency_p50_ms >= 1.0 && q.throughput_rps >= 1.0, "{}: {q:?}", s.id());
    }
    let first = p.services.iter().find(|s| s.id().as_str() == "serv154322459").unwrap().qos();
    assert_eq!((first.latency_p50_ms, first.throughput_rps * 60.0), (30.0, 20000.0), "the file's values");
}
