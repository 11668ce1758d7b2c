//! The known solutions of the WSC'08 sets against the independent validator: they pass for
//! sets 01-08, fail with the missing concept named for the unsolvable sets 09 and 10, and
//! hand-broken variants fail. This checks the loader and the validator against each other
//! before either is trusted to judge the planner.

mod common;

use baton_core::{Goal, ServiceSpec, TaxonomyBuilder};
use baton_planner::wsc::{self, WscProblem};

fn load(set: u32) -> WscProblem {
    let dir = common::repo_data(&format!("wsc08/TESTSET/Set{set:02}MetaData"));
    wsc::load_dir(&dir).unwrap_or_else(|e| panic!("set {set:02}: {e}"))
}

/// The known solution's layers, taking realization `pick` of each step (or its last).
fn layers(problem: &WscProblem, pick: usize) -> Vec<Vec<String>> {
    let known = problem.known_solution.as_ref().expect("problem.xml has a solution");
    known.iter().map(|layer| layer.iter().map(|step| step[pick.min(step.len() - 1)].clone()).collect()).collect()
}

/// Minimum layers of sets 01-08, data/README.md.
const MIN_LAYERS: [usize; 8] = [3, 3, 23, 5, 8, 7, 12, 20];

#[test]
fn the_known_solutions_of_sets_01_to_08_are_valid_with_any_realization() {
    for (set, min_layers) in (1..).zip(MIN_LAYERS) {
        let problem = load(set);
        let first = layers(&problem, 0);
        common::validate_layers(&problem, &first).unwrap_or_else(|e| panic!("set {set:02}: {e}"));
        assert!(first.len() >= min_layers, "set {set:02}: {} layers, fewer than the minimum {min_layers}", first.len());
        // A step's realizations are interchangeable.
        let widest = problem.known_solution.iter().flatten().flatten().map(Vec::len).max().unwrap_or(0);
        for pick in 1..widest {
            common::validate_layers(&problem, &layers(&problem, pick))
                .unwrap_or_else(|e| panic!("set {set:02}, realization {pick}: {e}"));
        }
    }
}

#[test]
fn the_known_solutions_of_sets_09_and_10_miss_an_input_and_say_which() {
    // The service of the single-step solution and its input that nothing provides (checked
    // against the files by hand, see data/README.md).
    for (set, service, concept) in [(9, "serv658648195", "con1948367172"), (10, "serv207029478", "con427614059")] {
        let problem = load(set);
        let err = common::validate_layers(&problem, &layers(&problem, 0)).unwrap_err();
        assert_eq!(err, format!("layer 1: input {concept} of service {service} is not available"), "set {set:02}");
    }
}

#[test]
fn broken_compositions_are_rejected_with_the_place_named() {
    for set in [1, 3, 8] {
        let problem = load(set);
        let good = layers(&problem, 0);
        let check = |broken: Vec<Vec<String>>, expected: &[&str], what: &str| {
            let err = common::validate_layers(&problem, &broken).expect_err(what);
            for e in expected {
                assert!(err.contains(e), "set {set:02}, {what}: {err:?} should contain {e:?}");
            }
        };

        let mut unknown = good.clone();
        unknown[0].push("serv-nope".to_owned());
        check(unknown, &["layer 1: unknown service serv-nope"], "unknown service");

        // Every service of a known solution is needed: dropping any one breaks it.
        for (l, layer) in good.iter().enumerate() {
            for s in 0..layer.len() {
                let mut broken = good.clone();
                let removed = broken[l].remove(s);
                check(broken, &[" is not available"], &format!("without {removed}"));
            }
        }

        let mut swapped = good.clone();
        swapped.swap(0, 1);
        check(swapped, &["layer 1: input ", " of service "], "first two layers swapped");

        // Outputs are available only after their layer, not to the services beside them.
        let mut merged = good.clone();
        let second = merged.remove(1);
        merged[0].extend(second);
        check(merged, &["layer 1: input "], "first two layers merged");

        let mut short = good.clone();
        short.pop();
        check(short, &["wanted concept ", format!("after layer {}", good.len() - 1).as_str()], "last layer dropped");
    }
}

/// The validator on a problem small enough to check by eye.
#[test]
fn the_validator_follows_subsumption_one_way() {
    let mut taxonomy = TaxonomyBuilder::default();
    taxonomy.add("document", None).unwrap().add("invoice", Some("document")).unwrap();
    taxonomy.add("order", None).unwrap().add("receipt", None).unwrap();
    let service = |id: &str, inputs: &[&str], outputs: &[&str]| {
        let json = serde_json::json!({
            "id": id, "endpoint": {"protocol": "worker", "queue": "wsc"}, "inputs": inputs, "outputs": outputs,
        });
        ServiceSpec::from_json(&json.to_string()).unwrap()
    };
    let problem = WscProblem {
        taxonomy: taxonomy.build().unwrap(),
        services: vec![
            service("bill", &["order"], &["invoice"]),
            service("archive", &["document"], &["receipt"]),
            service("audit", &["invoice"], &["receipt"]),
            service("foreign", &["unlisted"], &["receipt"]),
        ],
        goal: Goal { provided: vec!["order".into()], wanted: vec!["receipt".into()], ..Goal::default() },
        known_solution: None,
    };
    let layers = |names: &[&[&str]]| -> Vec<Vec<String>> {
        names.iter().map(|l| l.iter().map(|&s| s.to_owned()).collect()).collect()
    };
    // (layers, what the validator says).
    type Case<'a> = (&'a [&'a [&'a str]], Result<(), &'a str>);
    let cases: [Case<'_>; 6] = [
        // An invoice is a document.
        (&[&["bill"], &["archive"]], Ok(())),
        (&[&["bill"], &["audit", "archive"]], Ok(())),
        // Not in the same layer as its producer.
        (&[&["bill", "archive"]], Err("layer 1: input document of service archive is not available")),
        (&[&["bill"]], Err("wanted concept receipt is not available after layer 1")),
        // A name outside the taxonomy is satisfied by itself only.
        (&[&["foreign"]], Err("layer 1: input unlisted of service foreign is not available")),
        (&[], Err("wanted concept receipt is not available after layer 0")),
    ];
    for (names, expected) in cases {
        let got = common::validate_layers(&problem, &layers(names));
        assert_eq!(got.as_ref().map_err(String::as_str), expected.as_ref().map_err(|e| *e), "{names:?}");
    }
    // A document is not an invoice.
    let mut provides_document = problem;
    provides_document.goal.provided = vec!["document".into()];
    assert_eq!(
        common::validate_layers(&provides_document, &layers(&[&["audit"]])),
        Err("layer 1: input invoice of service audit is not available".to_owned())
    );
    assert_eq!(common::validate_layers(&provides_document, &layers(&[&["archive"]])), Ok(()));
}
