//! The three services' business: what each reads from a request and what its effect answers.

use std::fmt;
use std::str::FromStr;

use serde_json::{Value, json};

/// Which example service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Reserves stock: `POST /reserve` with `sku` and `quantity`, answers `{"id", "reservation", ..}`.
    Inventory,
    /// Charges a card: `POST /charge` with `amount`, answers `{"receipt", ..}`.
    Payments,
    /// Ships a reservation: `POST /ship` with `reservation` (and `receipt` or `paid`), answers
    /// `{"tracking", ..}`.
    Shipping,
}

impl Kind {
    /// Every kind, in the order an order flows through them.
    pub const ALL: [Kind; 3] = [Kind::Inventory, Kind::Payments, Kind::Shipping];

    /// The kind's name, also the default service id: `inventory`, `payments`, `shipping`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Inventory => "inventory",
            Self::Payments => "payments",
            Self::Shipping => "shipping",
        }
    }

    /// The path Baton POSTs to: `/reserve`, `/charge`, `/ship`.
    pub fn path(self) -> &'static str {
        match self {
            Self::Inventory => "/reserve",
            Self::Payments => "/charge",
            Self::Shipping => "/ship",
        }
    }

    /// The capabilities it registers: its domain (`inventory`, `payment`, `shipping`) and its
    /// action (`inventory.reserve`, `payment.charge`, `shipping.ship`).
    pub fn capabilities(self) -> &'static [&'static str] {
        match self {
            Self::Inventory => &["inventory", "inventory.reserve"],
            Self::Payments => &["payment", "payment.charge"],
            Self::Shipping => &["shipping", "shipping.ship"],
        }
    }

    /// The concepts it consumes (the planner's data types): `order` for inventory and payments,
    /// `reservation` and `receipt` for shipping.
    pub fn inputs(self) -> &'static [&'static str] {
        match self {
            Self::Inventory | Self::Payments => &["order"],
            Self::Shipping => &["reservation", "receipt"],
        }
    }

    /// The concepts it produces, each a key of its answer: `reservation`, `receipt`, `tracking`.
    pub fn outputs(self) -> &'static [&'static str] {
        match self {
            Self::Inventory => &["reservation"],
            Self::Payments => &["receipt"],
            Self::Shipping => &["tracking"],
        }
    }

    /// Cost per call it registers, in the demo's unit.
    pub(crate) fn cost(self) -> f64 {
        match self {
            Self::Inventory => 0.001,
            Self::Payments => 0.02,
            Self::Shipping => 0.5,
        }
    }

    /// Compliance tags it registers.
    pub(crate) fn compliance(self) -> &'static [&'static str] {
        match self {
            Self::Payments => &["pci-dss"],
            Self::Inventory | Self::Shipping => &[],
        }
    }

    /// The prefix of the ids its effects make.
    fn prefix(self) -> &'static str {
        match self {
            Self::Inventory => "res",
            Self::Payments => "rcpt",
            Self::Shipping => "trk",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown service kind {s:?}: expected inventory, payments or shipping"))
    }
}

/// A request the kind understood, ready for its effect.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Order {
    Reserve { sku: String, quantity: u64 },
    Charge { amount: f64 },
    Ship { reservation: String, receipt: Option<String> },
}

/// A field of the request: at the top level, or inside `order` (where a planned workflow puts
/// the whole order concept).
fn field<'a>(payload: &'a Value, name: &str) -> Option<&'a Value> {
    payload.get(name).or_else(|| payload.get("order").and_then(|o| o.get(name))).filter(|v| !v.is_null())
}

fn text(payload: &Value, name: &str) -> Result<Option<String>, String> {
    match field(payload, name) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(other) => Err(format!("field {name:?} must be a non-empty string, got {other}")),
    }
}

/// Reads a request of `kind`; the error says which field is wrong (the service answers 400).
pub(crate) fn parse(kind: Kind, payload: &Value) -> Result<Order, String> {
    match kind {
        Kind::Inventory => {
            let sku = text(payload, "sku")?.ok_or("field \"sku\" is required")?;
            let quantity = match field(payload, "quantity") {
                None => 1,
                Some(q) => q
                    .as_u64()
                    .filter(|&q| q > 0)
                    .ok_or_else(|| format!("field \"quantity\" must be a positive integer, got {q}"))?,
            };
            Ok(Order::Reserve { sku, quantity })
        }
        Kind::Payments => {
            let amount = field(payload, "amount").ok_or("field \"amount\" is required")?;
            let amount = amount
                .as_f64()
                .filter(|a| a.is_finite() && *a >= 0.0)
                .ok_or_else(|| format!("field \"amount\" must be a number >= 0, got {amount}"))?;
            Ok(Order::Charge { amount })
        }
        Kind::Shipping => {
            let reservation = text(payload, "reservation")?.ok_or("field \"reservation\" is required")?;
            let receipt = match text(payload, "receipt")? {
                Some(r) => Some(r),
                None => text(payload, "paid")?,
            };
            Ok(Order::Ship { reservation, receipt })
        }
    }
}

/// The answer of the effect numbered `sequence` of service `id`.
pub(crate) fn answer(kind: Kind, id: &str, sequence: u64, order: &Order) -> Value {
    let made = format!("{}-{id}-{sequence:06}", kind.prefix());
    match order {
        Order::Reserve { sku, quantity } => {
            json!({"id": made, "reservation": made, "sku": sku, "quantity": quantity, "service": id})
        }
        Order::Charge { amount } => json!({"receipt": made, "amount": amount, "service": id}),
        Order::Ship { reservation, receipt } => {
            json!({"tracking": made, "reservation": reservation, "receipt": receipt, "service": id})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: Kind, payload: Value, expected: Result<Order, &str>) {
        match (parse(kind, &payload), expected) {
            (Ok(actual), Ok(expected)) => assert_eq!(actual, expected, "{payload}"),
            (Err(actual), Err(expected)) => assert!(actual.contains(expected), "{actual:?} lacks {expected:?}"),
            (actual, expected) => panic!("{kind} {payload}: got {actual:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn requests_are_read_at_the_top_or_inside_the_order() {
        let reserve = |sku: &str, quantity| Order::Reserve { sku: sku.to_owned(), quantity };
        check(Kind::Inventory, json!({"sku": "a", "quantity": 2}), Ok(reserve("a", 2)));
        check(Kind::Inventory, json!({"order": {"sku": "b", "amount": 3}}), Ok(reserve("b", 1)));
        check(Kind::Inventory, json!({"sku": "a", "quantity": 0}), Err("positive integer"));
        check(Kind::Inventory, json!({"quantity": 1}), Err("\"sku\" is required"));
        check(Kind::Inventory, json!({"sku": 7}), Err("non-empty string"));
        check(Kind::Payments, json!({"amount": 12.5}), Ok(Order::Charge { amount: 12.5 }));
        check(Kind::Payments, json!({"order": {"amount": 3}}), Ok(Order::Charge { amount: 3.0 }));
        check(Kind::Payments, json!({"amount": -1}), Err("number >= 0"));
        check(Kind::Payments, json!(null), Err("\"amount\" is required"));
        let ship =
            |receipt: Option<&str>| Order::Ship { reservation: "r".to_owned(), receipt: receipt.map(Into::into) };
        check(Kind::Shipping, json!({"reservation": "r", "receipt": "p"}), Ok(ship(Some("p"))));
        check(Kind::Shipping, json!({"reservation": "r", "paid": "p"}), Ok(ship(Some("p"))));
        check(Kind::Shipping, json!({"reservation": "r"}), Ok(ship(None)));
        check(Kind::Shipping, json!({"receipt": "p"}), Err("\"reservation\" is required"));
    }

    #[test]
    fn answers_carry_the_output_concepts() {
        for kind in Kind::ALL {
            assert_eq!(kind.name().parse::<Kind>(), Ok(kind));
            let order = match kind {
                Kind::Inventory => Order::Reserve { sku: "a".into(), quantity: 1 },
                Kind::Payments => Order::Charge { amount: 1.0 },
                Kind::Shipping => Order::Ship { reservation: "r".into(), receipt: None },
            };
            let answer = answer(kind, "x", 7, &order);
            for concept in kind.outputs() {
                assert!(answer[concept].as_str().is_some_and(|v| v.ends_with("-x-000007")), "{answer}");
            }
        }
        assert!("warehouse".parse::<Kind>().unwrap_err().contains("warehouse"));
    }
}
